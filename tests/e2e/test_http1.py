"""The server's HTTP/1.1 connections, spoken to over raw sockets against a real `cuelog serve`:
pipelining, chunked and `Expect: 100-continue` bodies, HEAD, and what it refuses (a malformed
request, a head or a body over its limit), each with the JSON error shape and the connection
closed, the server serving on."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.e2e.test_connections import address, read_answer, read_until_closed
from tests.support import ServerProcess, running_server

API_KEY = "http1-key-0123456789abcdef"
MAX_BODY = 4096
CHAT = json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("http1")
    config = root / "cuelog.toml"
    config.write_text(f"[server]\nmax_body_bytes = {MAX_BODY}\n")
    with running_server(root / "data", "--config", str(config), "--api-key", API_KEY) as srv:
        yield srv


def post_head(path: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def refused(server: ServerProcess, request: bytes) -> tuple[int, dict[str, object]]:
    """Send `request`; the status and JSON error of the answer, which must close the
    connection."""
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 3)
    assert closed, f"the connection stayed open after {data!r}"
    assert b"connection: close" in data.lower()
    return status_of(data), json.loads(body_of(data))


def assert_serving(server: ServerProcess) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(read_answer(sock)) == 200


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    """Three requests sent in one write (a chat between two health checks) get three answers,
    in order, on the one connection, which then serves a fourth."""
    chat = post_head("/v1/chat/completions", f"Content-Length: {len(CHAT)}\r\n") + CHAT
    health = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(health + chat + health)
        # Answers may arrive in one read: split them by their content-length.
        data = b""
        answers: list[tuple[bytes, bytes]] = []
        while len(answers) < 3:
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)
            answers.append((head, rest[:length]))
            data = rest[length:]
        assert [status_of(head) for head, _ in answers] == [200, 200, 200]
        assert json.loads(answers[1][1])["choices"][0]["message"]["content"] == "Echo: hi"
        sock.sendall(health)
        assert status_of(read_answer(sock)) == 200


def test_a_chunked_body_is_read(server: ServerProcess) -> None:
    chunks = [CHAT[:10], CHAT[10:]]
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n") + body)
        answer = read_answer(sock)
    assert status_of(answer) == 200, answer
    assert json.loads(body_of(answer))["choices"][0]["message"]["content"] == "Echo: hi"


def test_expect_100_continue_is_answered_before_the_body(server: ServerProcess) -> None:
    head = post_head(
        "/v1/chat/completions", f"Content-Length: {len(CHAT)}\r\nExpect: 100-continue\r\n"
    )
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(CHAT)
        answer = read_answer(sock)
    assert status_of(answer) == 200, answer


def test_head_gets_the_head_only_and_the_connection_goes_on(server: ServerProcess) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: t\r\n" + b"Authorization: Bearer ")
        sock.sendall(API_KEY.encode() + b"\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert status_of(head) == 200
        assert b"content-length: " in head.lower()
        assert rest == b""  # no body follows a HEAD answer
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(read_answer(sock)) == 200


def test_a_quiet_stream_answers_at_once_and_its_frames_follow(server: ServerProcess) -> None:
    """Following the log past its head: the answer's head arrives before any event exists
    (a client sees the stream open), and the frames of a chat made afterwards follow on it."""
    with socket.create_connection(address(server), timeout=5) as sock:
        auth = f"Authorization: Bearer {API_KEY}\r\n"
        sock.sendall(f"GET /v1/health HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode())
        head_seq = json.loads(body_of(read_answer(sock)))["head_seq"]
    with socket.create_connection(address(server), timeout=5) as follower:
        follower.sendall(
            f"GET /v1/events?after={head_seq} HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {API_KEY}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        follower.settimeout(3)  # nothing is appended: the head alone must come
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = follower.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert status_of(head) == 200
        assert b"content-type: text/event-stream" in head.lower()
        assert b"transfer-encoding: chunked" in head.lower()
        assert rest == b""
        with socket.create_connection(address(server), timeout=5) as sock:
            sock.sendall(post_head("/v1/chat/completions", f"Content-Length: {len(CHAT)}\r\n"))
            sock.sendall(CHAT)
            assert status_of(read_answer(sock)) == 200
        follower.settimeout(5)
        while b"id: " not in rest:
            chunk = follower.recv(65536)
            assert chunk, rest
            rest += chunk
        assert f"id: {head_seq + 1}\n".encode() in rest


def test_a_percent_encoded_path_is_decoded(server: ServerProcess) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(
            f"GET /v1/agents/def%61ult HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
        )
        answer = read_answer(sock)
    assert status_of(answer) == 200, answer
    assert json.loads(body_of(answer))["id"] == "default"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),  # no request line
        (b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),  # no colon
        (b"GET /\xff HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # a byte llhttp refuses in a path
        # two different lengths: a request-smuggling shape
        (b"POST /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"GET /health HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (
            b"GET /health HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            431,
        ),
    ],
    ids=[
        "no-request-line",
        "header-without-colon",
        "bad-path-byte",
        "two-lengths",
        "big-head",
        "many-headers",
    ],
)
def test_a_bad_request_is_refused_and_closed(
    server: ServerProcess, request_bytes: bytes, status: int
) -> None:
    answered, error = refused(server, request_bytes)
    assert answered == status
    assert isinstance(error["error"], dict) and error["error"]["message"]
    assert_serving(server)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    server: ServerProcess,
) -> None:
    """`Content-Length` over `max_body_bytes`: 413 at once, the body never sent."""
    status, error = refused(
        server, post_head("/v1/chat/completions", f"Content-Length: {MAX_BODY + 1}\r\n")
    )
    assert status == 413
    assert "size limit" in str(error)
    assert_serving(server)


def test_a_chunked_body_over_the_limit_is_refused(server: ServerProcess) -> None:
    chunk = b"a" * 1000
    body = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    status, _ = refused(
        server, post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n") + body
    )
    assert status == 413
    assert_serving(server)


def test_an_upgrade_to_h2c_is_answered_as_http_1_1(server: ServerProcess) -> None:
    """`curl --http2` on plain HTTP asks to upgrade to h2c: answered over HTTP/1.1 instead,
    then the connection closes (no HTTP/2 here)."""
    request = (
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 3)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert closed


def test_a_request_over_http_1_0_is_answered_and_closed(server: ServerProcess) -> None:
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode())
        data, closed = read_until_closed(sock, 3)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert json.loads(body_of(data))["object"] == "list"
    assert closed


def test_a_client_that_sends_half_a_head_and_goes_away_costs_nothing(
    server: ServerProcess,
) -> None:
    for _ in range(20):
        with socket.create_connection(address(server), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le")
    assert_serving(server)
