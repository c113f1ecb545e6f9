"""The `http_fetch` tool (off by default): GET a public http(s) URL, safe against SSRF.

Every hop (the URL and each redirect target) is resolved first; if the address policy refuses
ANY resolved address the fetch stops before a socket is opened. The connection then goes to the
checked address itself (Host header and TLS SNI carry the name), so a second DNS answer cannot
swap in another target. Redirects are followed by hand, at most `max_redirects`; the body is
capped at `max_bytes` and the whole fetch at `timeout` seconds.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, Final, final

import httpx
import msgspec
import trio

from cuelog.actors._errors import ToolError
from cuelog.actors._tools import args_schema, decode_args

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress, int], "str | None"]
"""(address, port) -> None to allow, or the reason for refusing."""

METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_URL_CHARS: Final = 2048


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address tunnels to (mapped, 6to4, Teredo, NAT64)."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def public_addresses_only(address: IPAddress, port: int) -> str | None:
    """The default policy: refuse every address that is not plainly on the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            reason = public_addresses_only(inner, port)
            if reason is not None:
                return f"{address} embeds {inner}: {reason}"
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT address"),
        (
            isinstance(address, ipaddress.IPv6Address) and address.is_site_local,
            "a site-local address",
        ),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    for refused, why in checks:
        if refused:
            return f"{address} is {why}"
    return None


class HttpFetchConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of one fetch."""

    max_bytes: int = 1024 * 1024
    max_redirects: int = 5
    timeout: float = 20.0
    connect_timeout: float = 5.0
    # Hosts it may fetch from: `example.com` (that name) or `*.example.com` (its subdomains);
    # empty: any public host. Checked on every hop, before the address policy.
    allow_hosts: list[str] = msgspec.field(default_factory=list)


def host_allowed(host: str, allow_hosts: list[str]) -> bool:
    """Whether `host` matches the allow-list (an empty list allows every host)."""
    if not allow_hosts:
        return True
    host = host.lower().rstrip(".")
    for entry in allow_hosts:
        pattern = entry.lower().rstrip(".")
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


class HttpFetchArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An http or https URL to GET."""

    url: str


@final
class HttpFetchTool:
    """GET a public web page. `address_policy` decides which resolved addresses may be used."""

    name: Final = "http_fetch"
    description: Final = (
        "Fetch a public http(s) URL with GET and return the status, content type and body "
        "(text, truncated at a size limit). Private and local addresses are refused."
    )
    parameters: Final = args_schema(HttpFetchArgs)

    def __init__(
        self,
        config: HttpFetchConfig | None = None,
        *,
        address_policy: AddressPolicy = public_addresses_only,
    ) -> None:
        self.config = config or HttpFetchConfig()
        self._policy = address_policy

    async def run(self, args: dict[str, Any]) -> str:
        parsed = decode_args(self.name, args, HttpFetchArgs)
        with trio.move_on_after(self.config.timeout):
            return await self._fetch(_parse_url(parsed.url))
        raise ToolError(f"http_fetch: timed out after {self.config.timeout:g} s")

    async def _fetch(self, url: httpx.URL) -> str:
        for _ in range(self.config.max_redirects + 1):
            address = await self._checked_address(url)
            pinned = url.copy_with(host=str(address))
            host = url.raw_host.decode("ascii")
            headers = {
                "Host": url.netloc.decode("ascii"),
                "User-Agent": "cuelog-http-fetch/1",
                "Accept": "*/*",
                "Accept-Encoding": "identity",
            }
            extensions = {"sni_hostname": host} if url.scheme == "https" else {}
            timeout = httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)
            # A fresh client per hop: a pooled TLS connection must never serve another name.
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
                request = client.build_request(
                    "GET", pinned, headers=headers, extensions=extensions, timeout=timeout
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.TransportError as exc:
                    raise ToolError(f"http_fetch: {url} failed: {exc!r}") from None
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        url = _parse_url(str(url.join(location)))
                        continue
                    return await self._describe(url, response)
                finally:
                    await response.aclose()
        raise ToolError(f"http_fetch: more than {self.config.max_redirects} redirects")

    async def _checked_address(self, url: httpx.URL) -> IPAddress:
        host = url.raw_host.decode("ascii")
        if not host_allowed(host, self.config.allow_hosts):
            raise ToolError(
                f"http_fetch: refused {url.scheme}://{url.netloc.decode()}: "
                "the host is not in tools.http_fetch_allow_hosts"
            )
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await _resolve(host, port)
        for address in addresses:
            reason = self._policy(address, port)
            if reason is not None:
                raise ToolError(
                    f"http_fetch: refused {url.scheme}://{url.netloc.decode()}: {reason}"
                )
        return addresses[0]

    async def _describe(self, url: httpx.URL, response: httpx.Response) -> str:
        limit = self.config.max_bytes
        body = bytearray()
        truncated = False
        try:
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > limit:
                    truncated = True
                    del body[limit:]
                    break
        except httpx.TransportError as exc:
            raise ToolError(f"http_fetch: {url} failed while reading: {exc!r}") from None
        text = bytes(body).decode(response.encoding or "utf-8", "replace")
        status = response.status_code
        reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
        head = (
            f"HTTP {status} {reason}\n"
            f"URL: {url}\n"
            f"Content-Type: {response.headers.get('content-type', '')}\n\n"
        )
        tail = f"\n[truncated at {limit} bytes]" if truncated else ""
        return head + text + tail


def _parse_url(text: str) -> httpx.URL:
    if len(text) > MAX_URL_CHARS:
        raise ToolError(f"http_fetch: URL is over {MAX_URL_CHARS} characters")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ToolError(f"http_fetch: invalid URL {text!r}: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ToolError(f"http_fetch: only http and https URLs are allowed, not {url.scheme!r}")
    if not url.host:
        raise ToolError(f"http_fetch: URL {text!r} has no host")
    if url.userinfo:
        raise ToolError("http_fetch: URLs with credentials are not allowed")
    return url


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ToolError(f"http_fetch: cannot resolve {host}: {exc.strerror}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ToolError(f"http_fetch: {host} has no addresses")
    return addresses
