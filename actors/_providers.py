"""The provider registry: OpenAI-compatible upstreams added while the server runs.

A provider's config is an event on stream `providers`; its API key and header values are sealed
with AES-GCM under a key of its own, kept outside the log (a key file, or the table beside a
PostgreSQL log). Deleting a provider (or changing its secrets) destroys that key, so what the log
keeps can no longer be opened. Providers go into the run settings' provider map, so an agent
naming one uses it on its next run. Processes sharing a PostgreSQL log each follow the stream, so
a provider added through one is used by all (see `SharedStream`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncGenerator, Mapping, MutableMapping
from contextlib import aclosing
from typing import Final, final

import httpx
import msgspec
import trio
from cryptography.exceptions import InvalidTag

from cuelog.actors._errors import Conflict, Invalid, ModelError, NotFound
from cuelog.actors._events import ProviderDeleted, ProviderSaved
from cuelog.actors._messages import ChatMessage
from cuelog.actors._models import Finished, ModelChunk, ModelProvider, ModelRequest
from cuelog.actors._models_openai import OpenAIConfig, OpenAIModel
from cuelog.actors._names import PROVIDERS_STREAM
from cuelog.actors._sealed import DataKeys, open_sealed, seal
from cuelog.actors._shared_stream import SharedStream
from cuelog.runtime import EventLog

PROVIDER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_PROVIDERS: Final = 256
_KEY_ENV: Final = "PROVIDER_API_KEY"  # the name the key goes by in the model's private env


class ProviderSecrets(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about a provider besides its secrets."""

    base_url: str
    default_model: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_retries: int = 3


class ProviderState(msgspec.Struct, frozen=True, kw_only=True):
    """A provider as answers show it: never a secret, only whether there is one."""

    id: str
    config: ProviderConfig
    has_api_key: bool
    header_names: list[str]
    usable: bool  # False when its key is missing from the key file
    error: str | None = None


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    model: str
    seconds: float
    error: str | None = None


_secrets_decoder = msgspec.json.Decoder(ProviderSecrets)


class _Provider(msgspec.Struct):
    id: str
    config: ProviderConfig
    header_names: list[str]
    key_id: str
    secrets: ProviderSecrets | None  # None: the key is gone from the key file
    error: str | None = None

    def state(self) -> ProviderState:
        return ProviderState(
            id=self.id,
            config=self.config,
            has_api_key=bool(self.secrets and self.secrets.api_key),
            header_names=self.header_names,
            usable=self.secrets is not None,
            error=self.error,
        )


@final
class RegistryModel:
    """An OpenAI-compatible upstream of the registry; an empty model name means its default."""

    def __init__(self, provider_id: str, config: ProviderConfig, secrets: ProviderSecrets):
        self.name = provider_id
        self.config = config
        self.secrets = secrets
        self._env = {_KEY_ENV: secrets.api_key} if secrets.api_key else {}
        self._model = OpenAIModel(
            OpenAIConfig(
                base_url=config.base_url,
                api_key_env=_KEY_ENV if secrets.api_key else None,
                name=provider_id,
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                max_retries=config.max_retries,
                headers=dict(secrets.headers),
            ),
            env=self._env,
        )

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        if not request.model and self.config.default_model:
            request = msgspec.structs.replace(request, model=self.config.default_model)
        async with aclosing(self._model.stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _headers(self) -> dict[str, str]:
        headers = dict(self.secrets.headers)
        if self.secrets.api_key:
            headers["Authorization"] = f"Bearer {self.secrets.api_key}"
        return headers

    def scrub(self, text: str) -> str:
        key = self.secrets.api_key
        return text.replace(key, "[key]") if key else text

    async def models(self) -> list[str]:
        """The upstream's model ids (`GET {base_url}/models`)."""
        url = self.config.base_url.rstrip("/") + "/models"
        timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
                response = await client.get(url, headers=self._headers())
        except httpx.HTTPError as exc:
            raise ModelError(self.scrub(f"{self.name}: cannot reach {url}: {exc!r}")) from None
        if response.status_code != 200:
            text = self.scrub(response.text[:300])
            raise ModelError(f"{self.name}: upstream answered {response.status_code}: {text}")
        try:
            body = response.json()
            return [str(item["id"]) for item in body["data"]]
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"{self.name}: upstream sent no model list") from None


@final
class Providers:
    """The registry, folded from stream `providers` at start and kept current; each usable
    provider is also in `models` (the run settings' provider map) under its id."""

    def __init__(
        self,
        event_log: EventLog,
        key_file: DataKeys,
        models: MutableMapping[str, ModelProvider],
        *,
        reserved: Mapping[str, object] | None = None,
    ) -> None:
        self._log = event_log
        self._keys = key_file
        self._models = models
        self._reserved = set(reserved if reserved is not None else models)
        self._providers: dict[str, _Provider] = {}
        self._stream = SharedStream(event_log, PROVIDERS_STREAM, self._apply_event)
        self._stream.catch_up()

    def catch_up(self) -> None:
        """Take up what was recorded since (through any process sharing the log)."""
        self._stream.catch_up()

    async def follow(self) -> None:
        """Take up changes other processes record, as they come (until cancelled)."""
        await self._stream.follow()

    def _apply_event(self, event: object) -> None:
        if isinstance(event, ProviderSaved):
            self._apply(event)
        elif isinstance(event, ProviderDeleted):
            self._drop(event.provider_id)

    def _apply(self, event: ProviderSaved) -> _Provider:
        config = ProviderConfig(
            base_url=event.base_url,
            default_model=event.default_model,
            connect_timeout=event.connect_timeout,
            read_timeout=event.read_timeout,
            max_retries=event.max_retries,
        )
        key = self._keys.get(event.key_id)
        error = None
        opened: ProviderSecrets | None = None
        if key is None:
            error = "its key is not in the provider key file; set the API key again"
        else:
            try:
                opened = _secrets_decoder.decode(
                    open_sealed(key, f"provider:{event.provider_id}", event.key_id, event.sealed)
                )
            except (InvalidTag, ValueError, msgspec.DecodeError):
                error = "its secrets cannot be opened with the provider key file"
        provider = _Provider(
            id=event.provider_id,
            config=config,
            header_names=event.header_names,
            key_id=event.key_id,
            secrets=opened,
            error=error,
        )
        self._providers[event.provider_id] = provider
        if opened is not None:
            self._models[event.provider_id] = RegistryModel(event.provider_id, config, opened)
        else:
            self._models.pop(event.provider_id, None)
        return provider

    def _drop(self, provider_id: str) -> None:
        self._providers.pop(provider_id, None)
        self._models.pop(provider_id, None)

    def _provider(self, provider_id: str) -> _Provider:
        provider = self._providers.get(provider_id)
        if provider is None:
            raise NotFound(f"no provider {provider_id!r}")
        return provider

    def all(self) -> list[ProviderState]:
        return [self._providers[key].state() for key in sorted(self._providers)]

    def get(self, provider_id: str) -> ProviderState:
        return self._provider(provider_id).state()

    def secrets_of(self, provider_id: str) -> ProviderSecrets | None:
        return self._provider(provider_id).secrets

    async def save(
        self,
        provider_id: str,
        config: ProviderConfig,
        provider_secrets: ProviderSecrets,
        *,
        create: bool,
        actor: str | None = None,
    ) -> ProviderState:
        """Create (or replace) a provider, sealing its secrets under a new key; a replaced
        provider's old key is destroyed once the new config is in the log."""
        if not PROVIDER_ID_RE.fullmatch(provider_id):
            raise Invalid("id must be 1-64 letters, digits, _ or -", param="id")
        check_provider_config(config)

        def decide() -> str | None:  # the key of the config replaced
            old = self._providers.get(provider_id)
            if create:
                if provider_id in self._reserved:
                    raise Conflict(f"provider {provider_id!r} is configured by the server")
                if old is not None:
                    raise Conflict(f"provider {provider_id!r} exists")
                if len(self._providers) >= MAX_PROVIDERS:
                    raise Conflict(f"at most {MAX_PROVIDERS} providers")
            elif old is None:
                raise NotFound(f"no provider {provider_id!r}")
            return old.key_id if old is not None else None

        self._stream.catch_up()
        decide()  # refused before a key is made
        key_id, key = self._keys.add()
        event = ProviderSaved(
            provider_id=provider_id,
            base_url=config.base_url,
            default_model=config.default_model,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_retries=config.max_retries,
            header_names=sorted(provider_secrets.headers),
            key_id=key_id,
            sealed=seal(
                key, f"provider:{provider_id}", key_id, msgspec.json.encode(provider_secrets)
            ),
        )
        recorded = False
        try:
            old_key = await self._stream.record(event, decide, actor=actor)
            recorded = True
        finally:
            if not recorded:
                self._keys.destroy(key_id)  # the log refused: the new key seals nothing
        if old_key is not None:
            self._keys.destroy(old_key)
        return self._provider(provider_id).state()

    async def delete(self, provider_id: str, *, actor: str | None = None) -> None:
        """Remove a provider and destroy its key: the log keeps ciphertext nobody can open."""
        event = ProviderDeleted(provider_id=provider_id)
        key_id = await self._stream.record(
            event, lambda: self._provider(provider_id).key_id, actor=actor
        )
        self._keys.destroy(key_id)

    def model(self, provider_id: str) -> RegistryModel:
        provider = self._provider(provider_id)
        model = self._models.get(provider_id)
        if not isinstance(model, RegistryModel):
            raise Conflict(f"provider {provider_id!r} is unusable: {provider.error}")
        return model

    async def verify(self, provider_id: str, model_name: str | None = None) -> VerifyResult:
        """One minimal completion (one token) to prove the URL, key and model work."""
        model = self.model(provider_id)
        name = model_name or model.config.default_model
        if not name:
            raise Invalid("the provider has no default_model; name a model", param="model")
        request = ModelRequest(
            model=name, messages=[ChatMessage(role="user", content="ping")], max_tokens=1
        )
        started = time.monotonic()
        try:
            async with aclosing(model.stream(request)) as chunks:
                chunk: ModelChunk
                async for chunk in chunks:
                    if isinstance(chunk, Finished):
                        break
        except ModelError as exc:
            seconds = round(time.monotonic() - started, 3)
            return VerifyResult(ok=False, model=name, seconds=seconds, error=str(exc))
        await trio.lowlevel.checkpoint()
        return VerifyResult(ok=True, model=name, seconds=round(time.monotonic() - started, 3))

    async def models(self, provider_id: str) -> list[str]:
        return await self.model(provider_id).models()


def check_provider_config(config: ProviderConfig) -> None:
    if not config.base_url.startswith(("http://", "https://")):
        raise Invalid("base_url must start with http:// or https://", param="base_url")
    for name in ("connect_timeout", "read_timeout"):
        value = getattr(config, name)
        if not (math.isfinite(value) and 0 < value <= 3600):
            raise Invalid(f"{name} must be more than 0 and at most 3600 seconds", param=name)
    if not 0 <= config.max_retries <= 10:
        raise Invalid("max_retries must be 0-10", param="max_retries")
