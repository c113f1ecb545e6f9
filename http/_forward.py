"""Forwarding in cluster mode: a request for a session or run that another live node owns is sent
on to that node's advertised address, and its answer (SSE streams included) is relayed back.

The request goes as it came (method, path, query, body, the client's own credentials, so the
owner checks them itself), marked with `X-Cuelog-Forwarded-By`; a forwarded request is never
forwarded again (two nodes that disagree about an owner answer 503 `owned_elsewhere` rather than
bounce a request between them). Work a node did before it found the owner is safe to repeat:
an Idempotency-Key claim is found again by the owner and attaches to the same run. A message
this node could not record because it lost the actor's lease meanwhile (fenced: nothing of it
was written) reaches here the same way, with the node that took the lease over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, final

import httpx
import structlog
from quart import Response, request
from werkzeug.datastructures import Headers

from cuelog.runtime import ActorOwnedElsewhere

logger = structlog.get_logger("cuelog.http")

FORWARDED_BY: Final = "X-Cuelog-Forwarded-By"
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the relay sets itself.
_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        FORWARDED_BY.lower(),
    }
)
_CONNECT_SECONDS: Final = 5.0


@final
class Forwarder:
    """Sends requests on to the node that owns their actor. One per server, one pool."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(_CONNECT_SECONDS, read=None),
            follow_redirects=False,
            trust_env=False,  # the owner is an internal address: no proxy from the environment
        )
        self.forwarded = 0
        self.failed = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def forward(self, owned: ActorOwnedElsewhere) -> Response | None:
        """The owner's answer to this request, streamed; None when it cannot be forwarded (no
        address, already forwarded once, or the owner did not answer)."""
        if not owned.address or request.headers.get(FORWARDED_BY):
            return None
        body = await request.get_data(cache=True, as_text=False)
        assert isinstance(body, bytes)
        url = owned.address.rstrip("/") + request.path
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        headers.append((FORWARDED_BY, self.node))
        outgoing = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            self.failed += 1
            logger.warning("cannot forward to the owner", node=owned.node, error=repr(exc))
            return None
        self.forwarded += 1

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        response = Response(
            relay(),
            status=upstream.status_code,
            headers=Headers(
                [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _HOP]
            ),
        )
        response.timeout = None  # an SSE stream lasts as long as the owner's does
        return response


@asynccontextmanager
async def open_forwarder(node: str | None) -> AsyncIterator[Forwarder | None]:
    """A forwarder for node `node` (None when the server runs alone), closed on exit."""
    if node is None:
        yield None
        return
    forwarder = Forwarder(node)
    try:
        yield forwarder
    finally:
        await forwarder.aclose()
