"""The provider registry: `/v1/providers` to add, change, verify and remove OpenAI-compatible
upstreams while the server runs. A key is accepted, never answered: answers say only whether
one is set, and header values are masked."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from quart import Response

from cuelog.actors import ProviderConfig, Providers, ProviderSecrets, ProviderState
from cuelog.http._auth import Routes, principal
from cuelog.http._schemas import Deleted
from cuelog.http._services import Services
from cuelog.http._wire import ApiError, json_response, to_json

MASK = "********"

ProviderId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", max_length=64)]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
ModelName = Annotated[str, msgspec.Meta(max_length=256)]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,128}$")]
HeaderValue = Annotated[str, msgspec.Meta(max_length=8192)]
Headers = Annotated[dict[HeaderName, HeaderValue], msgspec.Meta(max_length=64)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=10)]


class ProviderBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new OpenAI-compatible upstream; `api_key` is stored sealed and never shown again."""

    id: ProviderId
    base_url: Url
    api_key: Key | None = None
    default_model: ModelName = ""
    headers: Headers = msgspec.field(default_factory=dict)
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 120.0
    max_retries: Retries = 3


class ProviderPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields to change. `api_key: null` keeps the key, `""` removes it; `headers` replaces the
    map, and a value sent back as the mask keeps the stored one."""

    base_url: Url | None = None
    api_key: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    default_model: ModelName | None = None
    headers: Headers | None = None
    connect_timeout: Seconds | None = None
    read_timeout: Seconds | None = None
    max_retries: Retries | None = None


class VerifyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    model: ModelName | None = None  # default: the provider's default_model


class Provider(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["provider"]
    base_url: str
    default_model: str
    has_api_key: bool
    headers: dict[str, str]  # values masked
    connect_timeout: float
    read_timeout: float
    max_retries: int
    status: Literal["ready", "unusable"]
    error: str | None


class ProviderList(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[Provider]


class ProviderVerified(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["provider.verify"]
    ok: bool
    model: str
    seconds: float
    error: str | None


class UpstreamModel(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"]
    owned_by: str


class UpstreamModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[UpstreamModel]


def provider_json(state: ProviderState) -> Provider:
    config = state.config
    return Provider(
        id=state.id,
        object="provider",
        base_url=config.base_url,
        default_model=config.default_model,
        has_api_key=state.has_api_key,
        headers=dict.fromkeys(state.header_names, MASK),
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_retries=config.max_retries,
        status="ready" if state.usable else "unusable",
        error=state.error,
    )


def register_provider_routes(routes: Routes, services: Services) -> None:
    def registry() -> Providers:
        if services.providers is None:
            raise ApiError(503, "the provider registry is not available on this server")
        return services.providers

    def answer(state: ProviderState, status: int = 200) -> Response:
        return json_response(to_json(provider_json(state)), status)

    @routes.add("/v1/providers", ["GET"], "read", answers={200: ProviderList})
    async def list_providers() -> Response:
        """Every registry provider (never a key)."""
        data = [provider_json(state) for state in registry().all()]
        return json_response(to_json(ProviderList(object="list", data=data)))

    @routes.add("/v1/providers", ["POST"], "admin", body=ProviderBody, answers={201: Provider})
    async def create_provider() -> Response:
        """Add an upstream; agents naming its id use it from their next run."""
        body, _ = await services.read(ProviderBody)
        config = ProviderConfig(
            base_url=body.base_url,
            default_model=body.default_model,
            connect_timeout=body.connect_timeout,
            read_timeout=body.read_timeout,
            max_retries=body.max_retries,
        )
        sealed = ProviderSecrets(api_key=body.api_key, headers=dict(body.headers))
        state = await registry().save(
            body.id, config, sealed, create=True, actor=principal().key_id
        )
        return answer(state, 201)

    @routes.add("/v1/providers/<provider_id>", ["GET"], "read", answers={200: Provider})
    async def get_provider(provider_id: str) -> Response:
        """One provider."""
        return answer(registry().get(provider_id))

    @routes.add(
        "/v1/providers/<provider_id>",
        ["PATCH"],
        "admin",
        body=ProviderPatch,
        answers={200: Provider},
    )
    async def patch_provider(provider_id: str) -> Response:
        """Change some fields; new secrets are sealed under a new key and the old key destroyed."""
        body, _ = await services.read(ProviderPatch)
        providers = registry()
        current = providers.get(provider_id)
        old = providers.secrets_of(provider_id)
        if old is None and (body.api_key is None or body.headers is None):
            raise ApiError(
                409,
                f"provider {provider_id!r} is unusable ({current.error}); "
                "send api_key and headers to set its secrets again",
                param="api_key",
            )
        old = old or ProviderSecrets()
        changes = {
            k: v
            for k, v in msgspec.structs.asdict(body).items()
            if v is not None and k not in {"api_key", "headers"}
        }
        config = msgspec.structs.replace(current.config, **changes)
        api_key = old.api_key if body.api_key is None else (body.api_key or None)
        headers = old.headers
        if body.headers is not None:
            headers = {
                k: old.headers.get(k, v) if v == MASK else v for k, v in body.headers.items()
            }
        sealed = ProviderSecrets(api_key=api_key, headers=headers)
        state = await providers.save(
            provider_id, config, sealed, create=False, actor=principal().key_id
        )
        return answer(state)

    @routes.add("/v1/providers/<provider_id>", ["DELETE"], "admin", answers={200: Deleted})
    async def delete_provider(provider_id: str) -> Response:
        """Remove a provider and destroy its key; agents naming it fail their next run."""
        await registry().delete(provider_id, actor=principal().key_id)
        return json_response(to_json(Deleted(id=provider_id, object="provider", deleted=True)))

    @routes.add(
        "/v1/providers/<provider_id>/verify",
        ["POST"],
        "admin",
        body=VerifyBody,
        answers={200: ProviderVerified},
    )
    async def verify_provider(provider_id: str) -> Response:
        """One minimal completion (max_tokens 1): `ok`, or the upstream's error."""
        body, _ = await services.read(VerifyBody)
        result = await registry().verify(provider_id, body.model)
        verified = ProviderVerified(
            id=provider_id,
            object="provider.verify",
            ok=result.ok,
            model=result.model,
            seconds=result.seconds,
            error=result.error,
        )
        return json_response(to_json(verified))

    @routes.add(
        "/v1/providers/<provider_id>/models", ["GET"], "admin", answers={200: UpstreamModelList}
    )
    async def provider_models(provider_id: str) -> Response:
        """The upstream's own model list."""
        ids = await registry().models(provider_id)
        data = [UpstreamModel(id=i, object="model", owned_by=provider_id) for i in ids]
        return json_response(to_json(UpstreamModelList(object="list", data=data)))
