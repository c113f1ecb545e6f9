"""Who is calling: API keys, scopes, and the route table that says which scope each route needs.

Every route is declared through `Routes.add` with its scope, so the scope table lives in one place
(and docs/api.md and the authz sweep test read the same table).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import msgspec
from quart import Response, g, request
from quart_trio import QuartTrio

from cuelog.actors import SCOPES, Caller, KeyInfo, is_valid_id, key_digest
from cuelog.http._params import Param
from cuelog.http._wire import ApiError

PUBLIC: Final = "public"


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller: which key (None when auth is off) and what it may do."""

    key_id: str | None
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return scope == PUBLIC or self.admin or scope in self.scopes

    def caller(self) -> Caller:
        return Caller(owner=self.key_id, admin=self.admin)


LOCAL: Final = Principal(None, frozenset(SCOPES))
STATIC_KEY_ID: Final = "static"


KeyLookup = Callable[[str], KeyInfo | None]  # sha256 hex of a presented key -> a usable key


class Authenticator:
    """Checks `Authorization: Bearer <key>` or `X-API-Key: <key>` in constant time."""

    def __init__(
        self,
        static_key: str | None,
        lookup: KeyLookup | None = None,
        has_keys: Callable[[], bool] = lambda: False,
    ) -> None:
        self._static = key_digest(static_key) if static_key else None
        self._lookup = lookup
        self._has_keys = has_keys

    @property
    def enabled(self) -> bool:
        """Auth is on with a static key or once any key was issued; off, the server is local."""
        return self._static is not None or self._has_keys()

    def presented_key(self) -> str | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip() or None
        return request.headers.get("x-api-key") or None

    def authenticate(self, *, required: bool = True) -> Principal | None:
        if not self.enabled:
            return LOCAL
        key = self.presented_key()
        if key is None:
            if required:
                raise ApiError(
                    401,
                    "no API key: send Authorization: Bearer <key> or X-API-Key",
                    code="missing_api_key",
                )
            return None
        digest = key_digest(key)
        if self._static is not None and hmac.compare_digest(digest, self._static):
            return Principal(STATIC_KEY_ID, frozenset(SCOPES))
        info = self._lookup(digest) if self._lookup is not None else None
        if info is None:
            if required:
                raise ApiError(401, "the API key is not valid (unknown, revoked or expired)")
            return None
        return Principal(info.id, frozenset(info.scopes))


def principal() -> Principal:
    """The caller of the current request (set by the route wrapper)."""
    found: Principal = g.principal
    return found


def caller() -> Caller:
    return principal().caller()


Handler = Callable[..., Awaitable[Response]]


class Limiter(Protocol):
    """Rate limits around authentication; each method raises a 429 `ApiError` to refuse."""

    def before_auth(self, *, public: bool) -> None:
        """Per client address, before the key is looked at (so bad keys are counted too); an
        address out of failed-authentication budget is held off every route but public ones."""

    def after_auth(self, who: Principal | None) -> None:
        """Per key, once the caller is known."""

    def auth_failed(self) -> None:
        """A 401 for a presented key, or a 403: the address spends a failure token."""


class RouteInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A route as registered: what it needs, takes and answers. The OpenAPI document is built
    from these, so it says what the handlers do."""

    rule: str
    methods: tuple[str, ...]
    scope: str  # the scope this route is documented under
    summary: str
    also: tuple[str, ...] = ()  # other scopes that are enough on their own
    body: type | None = None  # the request body struct
    answers: dict[int, type | None] = msgspec.field(default_factory=dict)  # None: any object
    params: tuple[Param, ...] = ()
    streams: bool = False  # answers (or can answer) Server-Sent Events
    runs: bool = False  # starts a run: the model can fail (502) or be slow (504)


class Routes:
    """Registers routes with their scope; the one place authorization is enforced."""

    def __init__(
        self,
        app: QuartTrio,
        auth: Authenticator,
        *,
        limit: Limiter | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limit = limit
        self.table: list[RouteInfo] = []

    def add(
        self,
        rule: str,
        methods: list[str],
        scope: str,
        *,
        also: Sequence[str] = (),
        body: type | None = None,
        answers: dict[int, type | None] | None = None,
        params: Sequence[Param] = (),
        streams: bool = False,
        runs: bool = False,
    ) -> Callable[[Handler], Handler]:
        for name in (scope, *also):
            if name not in SCOPES and name != PUBLIC:
                raise ValueError(f"unknown scope {name!r}")

        def register(handler: Handler) -> Handler:
            async def guarded(**kwargs: Any) -> Response:
                try:
                    self._check((scope, *also), kwargs)
                except ApiError:
                    await _drain_body()
                    raise
                return await handler(**kwargs)

            endpoint = f"{handler.__name__}_{'_'.join(methods).lower()}_{len(self.table)}"
            self.app.add_url_rule(rule, endpoint, guarded, methods=methods)
            self.table.append(
                RouteInfo(
                    rule=rule,
                    methods=tuple(methods),
                    scope=scope,
                    also=tuple(also),
                    summary=handler.__doc__ or "",
                    body=body,
                    answers=answers or {},
                    params=tuple(params),
                    streams=streams,
                    runs=runs,
                )
            )
            return handler

        return register

    def _check(self, scopes: tuple[str, ...], path_params: dict[str, Any]) -> None:
        """Authenticate, authorize, rate-limit, and refuse path ids that cannot name anything."""
        if self.limit is not None:
            self.limit.before_auth(public=PUBLIC in scopes)
        if PUBLIC in scopes:
            g.principal = self.auth.authenticate(required=False)
        else:
            try:
                who = self.auth.authenticate()
                assert who is not None
                if not any(who.allows(scope) for scope in scopes):
                    needed = " or ".join(repr(scope) for scope in scopes)
                    raise ApiError(
                        403, f"this key lacks the {needed} scope needed here", param=scopes[0]
                    )
            except ApiError as exc:
                if self.limit is not None and (exc.status == 403 or self.auth.presented_key()):
                    self.limit.auth_failed()
                raise
            g.principal = who
        if self.limit is not None:
            self.limit.after_auth(g.principal)
        for name, value in path_params.items():
            # Every id the API hands out matches; anything else names nothing (and would not
            # make a valid actor address or stream name).
            if not is_valid_id(value):
                raise ApiError(404, f"no {name} {value[:130]!r}", param=name)


async def _drain_body() -> None:
    """Take the request body before answering early: Hypercorn can leave a keep-alive
    connection hanging when the response goes out before the client finished sending."""
    with contextlib.suppress(Exception):  # too large or cut off: the refusal stands anyway
        await request.get_data(cache=True)
