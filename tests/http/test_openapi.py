"""The OpenAPI document: valid 3.1, complete, served with an offline docs page, and true to the
server under schemathesis."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from cuelog.http._auth import PUBLIC
from cuelog.http._openapi import openapi_path
from tests.http.operator_support import serving
from tests.support import CUELOG

API_KEY = "schemathesis-admin-key-0123456789"
# Bodies with rules JSON Schema cannot state (the last message must be the user's; a key's
# expiry must be in the future; an agent's tools and provider must be ones this server has; a
# loop's trigger is exactly one kind, a valid cron expression in a known time zone, in the
# future; a `callback_url` needs webhooks.secret and a host the address policy allows; a budget
# needs max_tokens or max_cost): a schema-valid body may still be refused with 400 there.
SEMANTIC_BODIES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/keys",
        "/v1/keys/{key_id}",
        "/v1/loops",
        "/v1/loops/{loop_id}",
        "/v1/agents",
        "/v1/agents/{agent_id}",
        "/v1/agents/{agent_id}/wake",
    }
)
# A valid MCP server or provider body would start a generated command or reach a generated URL:
# only invalid ones are generated here; tests/http/test_mcp.py and test_providers.py cover valid
# ones against real servers on 127.0.0.1.
NEGATIVE_ONLY = frozenset({("POST", "/v1/mcp/servers"), ("POST", "/v1/providers")})
EXAMPLES = int(os.environ.get("CUELOG_SCHEMATHESIS_EXAMPLES", "5"))


async def test_spec_is_valid_openapi_31_and_lists_every_route(tmp_path: Path) -> None:
    """/v1/openapi.json validates as OpenAPI 3.1 and has every route and method of the route
    table, with its scope as the operation's security."""
    async with serving(tmp_path / "data") as served:
        response = await served.admin.get("/v1/openapi.json", headers={"Authorization": ""})
        assert response.status_code == 200
        spec = response.json()
        validate(spec)
        assert spec["openapi"].startswith("3.1")
        for route in served.routes:
            path = openapi_path(route.rule)
            assert path in spec["paths"], path
            for method in route.methods:
                operation = spec["paths"][path][method.lower()]
                assert operation["x-cuelog-scope"] == route.scope
                if route.scope != PUBLIC:
                    assert {"bearer": [route.scope]} in operation["security"]
                    assert "401" in operation["responses"]
        table = {(openapi_path(r.rule), m.lower()) for r in served.routes for m in r.methods}
        documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
        assert documented == table
        wake = spec["paths"]["/v1/agents/{agent_id}/wake"]["post"]
        assert wake["parameters"][0] == {
            "name": "agent_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        }
        body_ref = wake["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body_ref == "#/components/schemas/WakeBody"
        error = spec["paths"]["/v1/agents"]["post"]["responses"]["409"]["content"]
        assert error["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"


async def test_docs_page_is_served_offline(tmp_path: Path) -> None:
    """/docs is an HTML page, public, that renders /v1/openapi.json with nothing from elsewhere."""
    async with serving(tmp_path / "data") as served:
        response = await served.admin.get("/docs", headers={"Authorization": ""})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "/v1/openapi.json" in response.text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text)
        assert "https://" not in response.text and "http://" not in response.text


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cuelog serve` in a subprocess, its log going to a file (a pipe nobody reads fills up
    and then blocks the server on its next log line)."""
    root = tmp_path_factory.mktemp("schemathesis")
    log_path = root / "server.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                CUELOG,
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(root / "data"),
                "--api-key",
                API_KEY,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield _wait_serving(log_path, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_serving(log_path: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "serving":
                    url: str = record["urls"][0]
                    return url
        time.sleep(0.05)
    raise RuntimeError("cuelog serve did not start:\n" + log_path.read_text())


# Invalid requests may be refused for their size too: a generated body over
# `server.max_body_bytes` (413) or a head over the connection's limit (431) is rejected, as it
# should be, before anything looks at its fields.
_REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"]
_REJECTIONS += ["429", "431", "5xx"]
_CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": _REJECTIONS}}}
)


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_dict(
        requests.get(f"{url}/v1/openapi.json", timeout=10).json(), config=_CONFIG
    )
    operations: list[Any] = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    return operations


def test_schemathesis_finds_no_server_errors_and_answers_match_the_spec(server_url: str) -> None:
    """Generated requests to every operation get no 5xx; valid ones get a documented status,
    content type and body schema."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    checks = schemathesis.checks
    positive = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.positive_data_acceptance,  # the server is no stricter than the spec
    ]
    negative = [checks.not_a_server_error, checks.negative_data_rejection]  # nor looser
    failures: list[str] = []

    def runner(strategy: Any, is_negative: bool, path: str) -> Any:
        checks_now = negative if is_negative else positive
        if path in SEMANTIC_BODIES and not is_negative:
            checks_now = [c for c in positive if c is not checks.positive_data_acceptance]

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(base_url=server_url, session=session, timeout=10)
            case.validate_response(response, checks=checks_now)

        return run

    with session:  # closed at the end, so the server's graceful shutdown has nothing to wait on
        _run_all(server_url, runner, failures)
    assert not failures, "\n\n".join(failures)


def _run_all(server_url: str, runner: Any, failures: list[str]) -> None:
    for operation in _operations(server_url):
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if mode is schemathesis.GenerationMode.POSITIVE and (
                (operation.method.upper(), operation.path) in NEGATIVE_ONLY
            ):
                continue
            strategy = operation.as_strategy(generation_mode=mode)
            run = runner(strategy, mode is schemathesis.GenerationMode.NEGATIVE, operation.path)
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure, then report
                if "Unable to satisfy assumptions" in str(exc):
                    continue  # nothing in this operation can be made invalid
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
