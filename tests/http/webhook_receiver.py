"""A real HTTP server on 127.0.0.1 that receives webhooks: it checks each request's signature
the way docs/api.md tells receivers to, and answers the status it is told to."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "whsec-test-0123456789abcdef"


def verify(secret: str, headers: Any, body: bytes, tolerance: float = 300) -> bool:
    """The receiver's check, as documented: a fresh timestamp and a matching HMAC."""
    timestamp = headers.get("Cuelog-Timestamp", "")
    signature = headers.get("Cuelog-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(signature, "v1=" + expected.hexdigest())


@dataclass
class Received:
    delivery: str
    body: bytes
    signed: bool
    answered: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    url: str
    fail_first: int = 0  # answer `failure` to this many requests first
    failure: int = 500
    always: int | None = None  # answer this to every request (None: 200 after fail_first)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self.lock:
            if self.always is not None:
                return self.always
            if self.fail_first > 0:
                self.fail_first -= 1
                return self.failure
            return 200

    def successes(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if 200 <= r.answered < 300]


@contextmanager
def receiver(secret: str = SECRET) -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signed = verify(secret, self.headers, body)
            status = state.answer() if signed else 401
            with state.lock:
                delivery = self.headers.get("Cuelog-Delivery", "")
                headers = dict(self.headers.items())
                state.received.append(Received(delivery, body, signed, status, headers))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
