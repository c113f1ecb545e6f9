"""The operator side of the API: keys, approvals, tools and the emergency stop."""

from __future__ import annotations

import time
from typing import cast

import msgspec
from quart import Response, request

from cuelog.actors import Caller, KeyInfo, key_signer
from cuelog.http._auth import Routes, caller, principal
from cuelog.http._bodies import ApprovalBody, EmergencyStopBody, InvokeBody, KeyBody, KeyPatch
from cuelog.http._params import ChoiceParam
from cuelog.http._schemas import (
    Approval,
    ApprovalDecision,
    ApprovalList,
    EmergencyStop,
    KeyList,
    NewKey,
    RunStatus,
    Tool,
    ToolList,
    ToolRun,
)
from cuelog.http._services import Services
from cuelog.http._wire import ApiError, json_response, to_json
from cuelog.runtime import CuelogError

APPROVAL_STATUS = ChoiceParam(name="status", choices=("pending",), default="pending")


def register_operator_routes(routes: Routes, services: Services) -> None:
    """Keys, approvals, tools and emergency stop."""
    domain = services.domain
    keys = domain.keys
    read_body = services.read

    def actor() -> str | None:
        return principal().key_id

    def approvals_caller() -> Caller:
        """Approvers see and decide every key's pending approvals: deciding them is their job.
        Other keys see only the approvals of their own runs."""
        who = principal()
        if who.allows("approve"):
            return Caller(owner=who.key_id, admin=True)
        return who.caller()

    # -- keys ----------------------------------------------------------------------------------

    @routes.add("/v1/keys", ["POST"], "admin", body=KeyBody, answers={201: NewKey})
    async def create_key() -> Response:
        """Issue an API key; the secret is in this response only."""
        body, _ = await read_body(KeyBody)
        signing = body.webhook_secret or None
        if signing is not None:
            services.outbox()  # a 503 before anything is written when webhooks are off
        info, secret = await keys.create(
            body.name,
            body.scopes,
            expires_at=body.expires_at,
            budgets=body.budgets,
            actor=actor(),
        )
        if signing is not None:
            await services.outbox().set_secret(key_signer(info.id), signing, actor=actor())
        new = NewKey(
            **msgspec.structs.asdict(info), key=secret, has_webhook_secret=signing is not None
        )
        return json_response(to_json(new), 201)

    @routes.add("/v1/keys", ["GET"], "admin", answers={200: KeyList})
    async def list_keys() -> Response:
        """Every key issued (never the secret)."""
        return json_response(to_json(KeyList(data=keys.all(), next_cursor=None)))

    @routes.add("/v1/keys/<key_id>", ["PATCH"], "admin", body=KeyPatch, answers={200: KeyInfo})
    async def patch_key(key_id: str) -> Response:
        """Replace a key's budgets."""
        body, _ = await read_body(KeyPatch)
        info = await keys.set_budgets(key_id, body.budgets, actor=actor())
        if info is None:
            raise ApiError(404, f"no key {key_id!r}")
        return json_response(to_json(info))

    @routes.add("/v1/keys/<key_id>", ["DELETE"], "admin", answers={200: KeyInfo})
    async def revoke_key(key_id: str) -> Response:
        """Revoke a key at once."""
        info = await keys.revoke(key_id, actor=actor())
        if info is None:
            raise ApiError(404, f"no key {key_id!r}")
        return json_response(to_json(info))

    # -- approvals -----------------------------------------------------------------------------

    @routes.add(
        "/v1/approvals",
        ["GET"],
        "read",
        also=["approve"],
        answers={200: ApprovalList},
        params=[APPROVAL_STATUS],
    )
    async def list_approvals() -> Response:
        """Tool calls waiting for a decision (only `status=pending` is kept in memory)."""
        APPROVAL_STATUS.get()  # only `pending` is kept in memory
        out = []
        for approval_id, run_id in sorted(domain.pending_approvals().items()):
            try:
                detail = await domain.approval_detail(approval_id, caller=approvals_caller())
            except CuelogError:
                continue
            if detail is not None:
                out.append(msgspec.convert({**detail, "run_id": run_id}, Approval))
        return json_response(to_json(ApprovalList(data=out, next_cursor=None)))

    @routes.add(
        "/v1/approvals/<approval_id>",
        ["POST"],
        "approve",
        body=ApprovalBody,
        answers={200: ApprovalDecision},
    )
    async def decide_approval(approval_id: str) -> Response:
        """Approve or deny a pending tool call; `args_digest` must match its arguments."""
        body, _ = await read_body(ApprovalBody)
        view = await domain.decide_approval(
            approval_id,
            approve=body.decision == "approve",
            args_digest=body.args_digest,
            by=actor(),
            reason=body.reason,
            caller=approvals_caller(),
        )
        decision = ApprovalDecision(
            id=approval_id,
            decision=body.decision,
            run_id=view.id,
            run_status=cast(RunStatus, view.status),
        )
        return json_response(to_json(decision))

    # -- tools ---------------------------------------------------------------------------------

    @routes.add("/v1/tools", ["GET"], "read", answers={200: ToolList})
    async def list_tools() -> Response:
        """Every built-in tool: schema, whether it is on, and the approval that applies."""
        tools = domain.settings.tools
        default = await domain.get_agent("default")
        data = []
        for name in tools.names():
            spec = tools.spec_of(name)
            policy = default.spec.tool_approval.get(name, default.spec.approval)
            data.append(
                Tool(
                    name=name,
                    description=spec.description,
                    parameters=spec.parameters,
                    enabled=tools.is_enabled(name),
                    approval_policy="auto" if domain.settings.auto_approve else policy,
                )
            )
        return json_response(to_json(ToolList(data=data, next_cursor=None)))

    @routes.add(
        "/v1/tools/invoke", ["POST"], "chat", body=InvokeBody, answers={200: ToolRun, 202: ToolRun}
    )
    async def invoke_tool() -> Response:
        """Run a tool in a run of its own under `tools.invoke_approval` (default: ask, so it
        waits for an approval); no agent is read or changed. `dry_run` only validates."""
        body, _ = await read_body(InvokeBody)
        tools = domain.settings.tools
        if body.name not in tools.names():
            raise ApiError(404, f"no tool named {body.name!r}", param="name")
        problems = tools.check_args(body.name, body.args)
        if problems:
            raise ApiError(400, f"{body.name}: {problems}", param="args")
        if not tools.is_enabled(body.name):
            raise ApiError(
                409, f"tool {body.name!r} is disabled on this server", code="tool_disabled"
            )
        approval = services.settings.tools.invoke_approval
        would = {"tool": body.name, "args": body.args, "agent": "tools", "approval": approval}
        if body.dry_run:
            return json_response(to_json(ToolRun(dry_run=True, valid=True, would_run=would)))
        view = await domain.invoke_tool(body.name, body.args, caller=caller(), approval=approval)
        status = 200 if view.status in {"completed", "failed", "cancelled"} else 202
        output = view.messages[-2].content if len(view.messages) >= 2 else None
        answer = ToolRun(
            run_id=view.id,
            status=cast(RunStatus, view.status),
            output=output,
            pending_approvals=view.pending_approvals,
            events_url=f"/v1/runs/{view.id}/events",
        )
        return json_response(to_json(answer), status)

    # -- emergency stop ------------------------------------------------------------------------

    @routes.add(
        "/v1/emergency-stop",
        ["POST"],
        "admin",
        body=EmergencyStopBody,
        answers={200: EmergencyStop},
    )
    async def emergency_stop() -> Response:
        """Cancel every active run; with `{"hold": true}` also refuse new ones until released.
        The body may be left out (no hold)."""
        raw = await request.get_data(cache=True, as_text=False)
        body = (await read_body(EmergencyStopBody))[0] if raw.strip() else EmergencyStopBody()
        started = time.monotonic()
        cancelled = await domain.emergency_stop(by=actor(), hold=body.hold)
        seconds = round(time.monotonic() - started, 3)
        stopped = domain.emergency_stopped
        return json_response(
            to_json(EmergencyStop(stopped=stopped, cancelled_runs=cancelled, seconds=seconds))
        )

    @routes.add("/v1/emergency-stop/release", ["POST"], "admin", answers={200: EmergencyStop})
    async def release_stop() -> Response:
        """Allow new runs again."""
        await domain.release_emergency_stop(by=actor())
        return json_response(to_json(EmergencyStop(stopped=False)))
