"""`http_fetch`: the fetch path against a 127.0.0.1 server, and SSRF refusals made before any
socket to the refused target exists. No traffic leaves 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket as stdlib_socket
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from cuelog.actors._errors import ToolError
from cuelog.actors._tools_net import (
    AddressPolicy,
    HttpFetchConfig,
    HttpFetchTool,
    IPAddress,
    public_addresses_only,
)

LOOPBACK = ipaddress.ip_address("127.0.0.1")


class Site:
    """A tiny web site: `/`, `/big`, `/hang`, `/redirect/N` and `/to?url=...`."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        self.requests.append((path, headers["host"]))
        if path == "/hang":
            await trio.sleep_forever()
        if path == "/big":
            await self._reply(send, 200, b"x" * 5000)
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{left - 1}" if left else "/"
            await self._reply(send, 302, b"", ((b"location", target.encode()),))
        elif path == "/to":
            target = parse_qs(scope["query_string"].decode())["url"][0]
            await self._reply(send, 307, b"", ((b"location", target.encode()),))
        else:
            await self._reply(send, 200, f"hello from {headers['host']}".encode())

    async def _reply(
        self, send: Any, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        start_headers = [(b"content-type", b"text/plain; charset=utf-8"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        await send({"type": "http.response.body", "body": body})


class CountingSockets(trio.abc.SocketFactory):
    """Counts every socket trio creates (httpx opens its connections through trio.socket)."""

    def __init__(self) -> None:
        self.created = 0

    def socket(
        self,
        family: stdlib_socket.AddressFamily | int = stdlib_socket.AF_INET,
        type: stdlib_socket.SocketKind | int = stdlib_socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        self.created += 1
        return trio.socket.from_stdlib_socket(stdlib_socket.socket(family, type, proto))


class FakeDNS(trio.abc.HostnameResolver):
    """Answers names from a table; tests never reach a real DNS server."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        name = (host or b"").decode()
        if name not in self.table:
            raise stdlib_socket.gaierror(stdlib_socket.EAI_NONAME, "Name or service not known")
        stream = stdlib_socket.SOCK_STREAM
        answers: list[Any] = []
        for address in self.table[name]:
            if ":" in address:
                answers.append((stdlib_socket.AF_INET6, stream, 6, "", (address, 0, 0, 0)))
            else:
                answers.append((stdlib_socket.AF_INET, stream, 6, "", (address, 0)))
        return answers

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError


@pytest.fixture
async def site(nursery: trio.Nursery) -> AsyncIterator[Site]:
    app = Site()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    asgi: Any = app
    binds = await nursery.start(
        lambda task_status: hypercorn_serve(
            asgi, config, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    app.port = int(binds[0].rsplit(":", 1)[1])
    yield app
    stop.set()


@pytest.fixture
async def sockets() -> CountingSockets:
    """Counts sockets made in this test's run (tests zero it once other fixtures are up)."""
    counter = CountingSockets()
    trio.socket.set_custom_socket_factory(counter)
    return counter


class Canary:
    """A listening socket nobody accepts on: a connection attempt would sit in its backlog."""

    def __init__(self, host: str, family: stdlib_socket.AddressFamily) -> None:
        self.sock = stdlib_socket.socket(family, stdlib_socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def was_contacted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary("127.0.0.1", stdlib_socket.AF_INET)
    yield c
    c.sock.close()


def only_site(site: Site) -> AddressPolicy:
    """Allow exactly the test site's address and port; everything else by the default policy."""

    def policy(address: IPAddress, port: int) -> str | None:
        if address == LOOPBACK and port == site.port:
            return None
        return public_addresses_only(address, port)

    return policy


async def test_fetch_connects_to_the_checked_address_with_the_original_host(
    site: Site, sockets: CountingSockets
) -> None:
    """A name resolving to an allowed address is fetched there, with Host set to the name."""
    sockets.created = 0  # fixtures (the site's listener) may have made some
    trio.socket.set_custom_hostname_resolver(FakeDNS({"fetch.test": ["127.0.0.1"]}))
    tool = HttpFetchTool(address_policy=only_site(site))
    result = await tool.run({"url": f"http://fetch.test:{site.port}/page"})
    assert result.startswith("HTTP 200 OK\n")
    assert f"URL: http://fetch.test:{site.port}/page" in result
    assert "Content-Type: text/plain; charset=utf-8" in result
    assert result.endswith(f"hello from fetch.test:{site.port}")
    assert site.requests == [("/page", f"fetch.test:{site.port}")]
    assert sockets.created == 1


async def test_redirects_are_followed_up_to_the_limit(site: Site) -> None:
    """Three redirects are followed to the final page; six exceed the limit of five."""
    tool = HttpFetchTool(address_policy=only_site(site))
    result = await tool.run({"url": f"http://127.0.0.1:{site.port}/redirect/3"})
    assert result.endswith(f"hello from 127.0.0.1:{site.port}")
    assert [p for p, _ in site.requests] == [
        "/redirect/3",
        "/redirect/2",
        "/redirect/1",
        "/redirect/0",
        "/",
    ]
    with pytest.raises(ToolError, match="more than 5 redirects"):
        await tool.run({"url": f"http://127.0.0.1:{site.port}/redirect/6"})


async def test_allow_list_refuses_other_hosts_on_every_hop(
    site: Site, sockets: CountingSockets
) -> None:
    """With `allow_hosts`, a listed name is fetched, `*.` matches subdomains, and an unlisted
    host (also as a redirect target) is refused before any socket is opened."""
    trio.socket.set_custom_hostname_resolver(
        FakeDNS({"a.fetch.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    )
    config = HttpFetchConfig(allow_hosts=["*.fetch.test"])
    tool = HttpFetchTool(config, address_policy=only_site(site))
    result = await tool.run({"url": f"http://a.fetch.test:{site.port}/page"})
    assert result.startswith("HTTP 200 OK\n")
    sockets.created = 0
    with pytest.raises(ToolError, match=r"not in tools\.http_fetch_allow_hosts"):
        await tool.run({"url": f"http://other.test:{site.port}/page"})
    with pytest.raises(ToolError, match=r"not in tools\.http_fetch_allow_hosts"):
        target = f"http://other.test:{site.port}/page"
        await tool.run({"url": f"http://a.fetch.test:{site.port}/to?url={target}"})
    assert sockets.created == 1  # the allowed first hop only


async def test_body_is_capped(site: Site) -> None:
    """A body over max_bytes is cut there and the answer says so."""
    tool = HttpFetchTool(HttpFetchConfig(max_bytes=1000), address_policy=only_site(site))
    result = await tool.run({"url": f"http://127.0.0.1:{site.port}/big"})
    assert result.endswith("x" * 1000 + "\n[truncated at 1000 bytes]")
    assert "x" * 1001 not in result


async def test_slow_server_times_out(site: Site, autojump_clock: trio.testing.MockClock) -> None:
    """A server that never answers makes the fetch fail after the configured time."""
    tool = HttpFetchTool(HttpFetchConfig(timeout=7), address_policy=only_site(site))
    start = trio.current_time()
    with pytest.raises(ToolError, match="timed out after 7 s"):
        await tool.run({"url": f"http://127.0.0.1:{site.port}/hang"})
    assert trio.current_time() - start == pytest.approx(7)


async def test_default_policy_refuses_local_targets_before_connecting(
    canary: Canary, sockets: CountingSockets
) -> None:
    """127.0.0.1, localhost, ::1, 169.254.169.254 and 10.0.0.1 are refused with no socket made."""
    sockets.created = 0  # fixtures (the site's listener) may have made some
    tool = HttpFetchTool()
    targets = {
        f"http://127.0.0.1:{canary.port}/": "127.0.0.1 is a loopback address",
        f"http://localhost:{canary.port}/": "is a loopback address",
        "http://[::1]/": "::1 is a loopback address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a cloud metadata",
        "http://10.0.0.1/": "10.0.0.1 is a private address",
        "https://[::ffff:127.0.0.1]/": "embeds 127.0.0.1",
        "http://2130706433/": "127.0.0.1 is a loopback address",
    }
    for url, reason in targets.items():
        with pytest.raises(ToolError, match=f"refused .*{reason}"):
            await tool.run({"url": url})
    assert sockets.created == 0
    assert not canary.was_contacted()


async def test_names_resolving_to_any_refused_address_are_refused(
    sockets: CountingSockets,
) -> None:
    """A name is refused if any of its addresses is refused, even alongside a public one."""
    sockets.created = 0  # fixtures (the site's listener) may have made some
    trio.socket.set_custom_hostname_resolver(
        FakeDNS(
            {
                "metadata.test": ["169.254.169.254"],
                "mixed.test": ["93.184.216.34", "10.0.0.1"],
                "v6meta.test": ["fd00:ec2::254"],
            }
        )
    )
    tool = HttpFetchTool()
    for name, reason in [
        ("metadata.test", "cloud metadata"),
        ("mixed.test", "10.0.0.1 is a private address"),
        ("v6meta.test", "cloud metadata"),
    ]:
        with pytest.raises(ToolError, match=reason):
            await tool.run({"url": f"https://{name}/"})
    with pytest.raises(ToolError, match=r"cannot resolve nowhere\.test"):
        await tool.run({"url": "http://nowhere.test/"})
    assert sockets.created == 0


async def test_redirect_to_loopback_is_refused_before_connecting(
    site: Site, canary: Canary, sockets: CountingSockets
) -> None:
    """An allowed server redirecting to 127.0.0.1 (another port) is refused; no connection."""
    sockets.created = 0  # fixtures (the site's listener) may have made some
    tool = HttpFetchTool(address_policy=only_site(site))
    target = f"http://127.0.0.1:{canary.port}/admin"
    with pytest.raises(ToolError, match=r"refused .*127\.0\.0\.1 is a loopback address"):
        await tool.run({"url": f"http://127.0.0.1:{site.port}/to?url={target}"})
    assert [p for p, _ in site.requests] == ["/to"]
    assert sockets.created == 1  # the allowed site only
    assert not canary.was_contacted()


async def test_only_http_urls_without_credentials(sockets: CountingSockets) -> None:
    """file:, ftp:, URLs with user:pass@ and unknown argument fields are refused."""
    sockets.created = 0  # fixtures (the site's listener) may have made some
    tool = HttpFetchTool()
    for url, reason in [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/", "only http and https"),
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "no host"),
    ]:
        with pytest.raises(ToolError, match=reason):
            await tool.run({"url": url})
    with pytest.raises(ToolError, match="unknown field `method`"):
        await tool.run({"url": "http://example.com/", "method": "POST"})
    assert sockets.created == 0


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("169.254.1.1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("fc00::1", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("100.100.100.200", False),
    ],
)
def test_default_address_policy(address: str, allowed: bool) -> None:
    """Only plainly public unicast addresses pass; tunnels to private IPv4 do not."""
    reason = public_addresses_only(ipaddress.ip_address(address), 80)
    assert (reason is None) == allowed, reason
