"""Connections against a real `cuelog serve`: closed as HTTP says, idle ones timed out, capped,
and fd exhaustion survived and reported once."""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.support import ServerProcess, running_server

HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
HEALTH_CLOSE = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def config(tmp_path: Path, **server: object) -> str:
    path = tmp_path / "cuelog.toml"
    lines = ["[server]", *(f"{key} = {json.dumps(value)}" for key, value in server.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed its end within `within` seconds."""
    sock.settimeout(within)
    data = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        pass
    return data, False


def read_answer(sock: socket.socket) -> bytes:
    """One whole response (head and its content-length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def connections(
    server: ServerProcess, count: int, request: bytes | None = None
) -> Iterator[list[socket.socket]]:
    """`count` open connections, each having sent `request` as soon as it connected."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(address(server), timeout=5))
            if request is not None:
                sock.sendall(request)
            socks.append(sock)
        yield socks


def health_status(server: ServerProcess, request: bytes = HEALTH_CLOSE) -> int:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(request)
        data, _ = read_until_closed(sock, 2)
    return int(data.split(b" ", 2)[1])


def test_server_closes_the_connection_as_http_says(tmp_path: Path) -> None:
    """After `Connection: close` or an HTTP/1.0 request the server answers and closes its end."""
    requests = [
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
    ]
    with running_server(tmp_path / "data") as server:
        for request in requests:
            with socket.create_connection(address(server), timeout=5) as sock:
                sock.sendall(request)
                data, closed = read_until_closed(sock, 3)
            assert data.startswith(b"HTTP/1.1 200"), data
            assert closed, f"the server kept the socket open after {request!r}"


def test_idle_keep_alive_connection_is_closed_after_the_timeout(tmp_path: Path) -> None:
    """A keep-alive connection left idle is closed by the server after `keep_alive_timeout`."""
    cfg = config(tmp_path, keep_alive_timeout=1.0)
    with (
        running_server(tmp_path / "data", "--config", cfg) as server,
        socket.create_connection(address(server), timeout=5) as sock,
    ):
        sock.sendall(HEALTH)
        started = time.monotonic()
        data, closed = read_until_closed(sock, 6)
        assert data.startswith(b"HTTP/1.1 200"), data
        assert closed, "the idle connection outlived keep_alive_timeout"
        assert 0.8 <= time.monotonic() - started < 5


def test_at_the_cap_the_longest_idle_connection_makes_room(tmp_path: Path) -> None:
    """At `max_connections`, a new client is served and the connection idle the longest is
    closed to make room."""
    cfg = config(tmp_path, max_connections=4)
    with (
        running_server(tmp_path / "data", "--config", cfg) as server,
        connections(server, 4, HEALTH) as held,
    ):
        for sock in held:
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
        assert health_status(server) == 200
        _, closed = read_until_closed(held[0], 3)
        assert closed, "the longest-idle connection was not the one closed"
        for sock in held[1:]:
            sock.sendall(HEALTH)
            assert read_answer(sock).startswith(b"HTTP/1.1 200")


def test_connections_over_the_cap_get_503_and_the_server_recovers(tmp_path: Path) -> None:
    """When `max_connections` are all busy with a request, a new client gets a JSON 503 with
    Retry-After and is closed; once they finish, the server answers again."""
    cfg = config(tmp_path, max_connections=4)
    # A request whose body has not all arrived keeps its connection busy.
    busy = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
    busy += b"\r\nContent-Length: 100\r\n\r\n{"
    with running_server(tmp_path / "data", "--config", cfg) as server:
        with connections(server, 4, busy):
            time.sleep(0.5)  # the server has read their request heads
            with socket.create_connection(address(server), timeout=5) as extra:
                extra.sendall(HEALTH)
                data, closed = read_until_closed(extra, 3)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), data
            assert b"retry-after: 1" in head.lower()
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            assert closed
        deadline = time.monotonic() + 5
        while health_status(server) != 200:
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.1)


def with_fd_limit(soft: int, hard: int | None = None) -> list[str]:
    """A command prefix that sets RLIMIT_NOFILE (hard defaults to soft), then execs the rest."""
    hard = soft if hard is None else hard
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code]


def test_more_sockets_than_fds_do_not_take_the_server_down(tmp_path: Path) -> None:
    """With 128 fds, 200 clients that each send a request and never close are all answered, and
    the server goes on serving `/health`."""
    with (
        running_server(tmp_path / "data", prefix=with_fd_limit(128)) as server,
        connections(server, 200, HEALTH) as held,
    ):
        statuses = set()
        for sock in held:
            sock.settimeout(5)
            statuses.add(sock.recv(12))
        assert statuses <= {b"HTTP/1.1 200", b"HTTP/1.1 503"}, statuses
        # The 200 client sockets are all still open on this side, and yet /health is answered.
        assert health_status(server) == 200


def test_fd_exhaustion_is_reported_once_per_interval_and_survived(tmp_path: Path) -> None:
    """When accept runs out of fds the server logs one `accept_exhausted` line (no traceback)
    for seconds of failures, and serves again once fds are free."""
    with running_server(tmp_path / "data") as server:
        assert health_status(server) == 200  # first-request imports done
        pid = server.proc.pid
        in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = min(set(range(len(in_use) + 1)) - in_use)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))  # no fd left
        with connections(server, 12, HEALTH_CLOSE) as held:
            time.sleep(1.5)  # 15 accept retries' worth of EMFILE
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            answers = [read_until_closed(sock, 3)[0] for sock in held]
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
        assert health_status(server) == 200
        exhausted = [line for line in server.log_lines if "accept_exhausted" in line]
        assert len(exhausted) == 1, exhausted
        assert json.loads(exhausted[0])["errno"] == "EMFILE"
        assert not [line for line in server.log_lines if "Traceback" in line]


def test_soft_fd_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """A server started with a soft fd limit below the hard one raises it, and sizes its
    connection cap from it."""
    with running_server(tmp_path / "data", prefix=with_fd_limit(128, 512)) as server:
        assert resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE) == (512, 512)
        serving = json.loads(next(line for line in server.log_lines if '"serving"' in line))
        assert serving["max_connections"] == 512 - 64
