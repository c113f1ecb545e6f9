"""The agent actor: an agent's definition, created, updated and deleted by events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import msgspec

from cuelog.actors._errors import Conflict, NotFound
from cuelog.actors._events import (
    DOMAIN_CODEC,
    AgentCreated,
    AgentDeleted,
    AgentSpec,
    AgentUpdated,
)
from cuelog.runtime import Event, EventSourcedActor, RecordedEvent


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    exists: bool = False
    deleted: bool = False
    spec: AgentSpec | None = None


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    spec: AgentSpec
    version: int


class CreateAgent(msgspec.Struct, frozen=True):
    spec: AgentSpec
    if_absent: bool = False


class UpdateAgent(msgspec.Struct, frozen=True):
    spec: AgentSpec


class DeleteAgent(msgspec.Struct, frozen=True):
    pass


class GetAgent(msgspec.Struct, frozen=True):
    pass


@final
class AgentActor(EventSourcedActor[AgentState]):
    codec = DOMAIN_CODEC

    def initial_state(self) -> AgentState:
        return AgentState()

    def evolve(self, state: AgentState, event: Event) -> AgentState:
        match event:
            case AgentCreated(spec=spec):
                return AgentState(exists=True, spec=spec)
            case AgentUpdated(spec=spec):
                return msgspec.structs.replace(state, spec=spec)
            case AgentDeleted():
                return AgentState(deleted=True)
        return state

    async def decide(self, state: AgentState, command: Any) -> Sequence[Event]:
        live = state.exists and not state.deleted
        match command:
            case CreateAgent(spec=spec, if_absent=if_absent):
                if live:
                    if if_absent:
                        return []
                    raise Conflict(f"agent {self.ctx.id!r} already exists")
                return [AgentCreated(agent_id=self.ctx.id, spec=spec)]
            case UpdateAgent(spec=spec):
                if not live:
                    raise NotFound(f"no agent {self.ctx.id!r}")
                return [] if spec == state.spec else [AgentUpdated(spec=spec)]
            case DeleteAgent():
                if not live:
                    raise NotFound(f"no agent {self.ctx.id!r}")
                return [AgentDeleted()]
            case GetAgent():
                if not live:
                    raise NotFound(f"no agent {self.ctx.id!r}")
                return []
        raise TypeError(f"agent actor cannot handle {type(command).__name__}")

    def reply(self, state: AgentState, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        if not state.exists or state.spec is None:
            return None
        return AgentView(id=self.ctx.id, spec=state.spec, version=self.version)
