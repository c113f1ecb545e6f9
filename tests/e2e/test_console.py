"""The web console at /ui in headless Chromium against a real `cuelog serve` with a key.

Needs Debian's `chromium` at /usr/bin/chromium and the Python `playwright` package (no browser
download: Playwright drives the system Chromium). Without the browser these tests skip and say
which apt command installs it. Screenshots go to $CUELOG_CONSOLE_SCREENSHOTS when set (the docs
use `CUELOG_CONSOLE_SCREENSHOTS=docs/img`), to a temporary folder otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, running_server

try:
    from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
except ImportError:
    pytest.skip(
        "console tests need the `playwright` package: pip install -e '.[dev]'",
        allow_module_level=True,
    )

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"console tests need Chromium at {CHROMIUM}; install it with `{INSTALL}`",
        allow_module_level=True,
    )

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
WAIT_MS = 10_000
PRICE_IN, PRICE_OUT = 3.0, 15.0  # per million tokens of echo-1
NO_VALUE = "\N{EN DASH}"  # what the live panel shows before its first numbers


@dataclass
class Console:
    server: ServerProcess
    key: str
    api: httpx.Client
    browser: Browser
    shots: Path

    def page(self) -> Page:
        page = self.browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(WAIT_MS)
        return page

    def login(self, page: Page, hash_route: str = "#/sessions") -> None:
        page.goto(f"{self.server.url}/ui/{hash_route}")
        expect(page.locator("#key-prompt")).to_be_visible()
        page.fill("#key-input", self.key)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-prompt")).to_be_hidden()

    def wake(self, agent: str, message: str) -> dict[str, Any]:
        response = self.api.post(
            f"/v1/agents/{agent}/wake", json={"message": message, "mode": "async"}
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def run_seqs(self, run_id: str) -> list[int]:
        """Every seq of a finished run, from its SSE stream (which replays and closes)."""
        seqs = []
        with self.api.stream("GET", f"/v1/runs/{run_id}/events") as response:
            for line in response.iter_lines():
                if line.startswith("id: "):
                    seqs.append(int(line[4:]))
        return seqs

    def approve_pending(self, run_id: str) -> None:
        pending = [a for a in self.api.get("/v1/approvals").json()["data"] if a["run_id"] == run_id]
        for approval in pending:
            decision = {"decision": "approve", "args_digest": approval["args_digest"]}
            assert self.api.post(f"/v1/approvals/{approval['id']}", json=decision).is_success


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    key = secrets.token_urlsafe(24)
    data = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("CUELOG_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    config = data / "cuelog.toml"
    config.write_text(f'[prices."echo-1"]\ninput = {PRICE_IN}\noutput = {PRICE_OUT}\n')
    with (
        running_server(data / "data", "--api-key", key, "--config", str(config)) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as api,
        sync_playwright() as playwright,
    ):
        for agent in (
            {"id": "careful", "tools": ["calculator"], "approval": "ask"},
            {"id": "helper", "tools": ["calculator"]},
        ):
            assert api.post("/v1/agents", json=agent).status_code == 201
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield Console(server, key, api, browser, shots)
        finally:
            browser.close()


def test_nothing_shows_without_the_key(console: Console) -> None:
    """With auth on, the console asks for the key, refuses a wrong one, and works with the right
    one (the page itself is public; the data is not)."""
    page = console.page()
    page.goto(f"{console.server.url}/ui")
    expect(page.locator("#key-prompt")).to_be_visible()
    expect(page.locator("#key-prompt")).to_contain_text("API key needed")
    expect(page.locator("#sessions")).to_have_count(0)
    page.fill("#key-input", "not-the-key-" + "x" * 20)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("refused")
    page.fill("#key-input", console.key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#sessions")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('cuelog.key')") == console.key
    page.close()


def test_run_page_streams_approves_and_resumes_after_reload(console: Console) -> None:
    """The run page fills live, survives a reload mid-run without a duplicate or a gap (it
    resumes with Last-Event-ID), approves the tool call with its digest, and shows the answer."""
    woke = console.wake("careful", '/tool calculator {"expr": "6*7"}')
    run_id = woke["run_id"]
    page = console.page()
    console.login(page, f"#/run/{run_id}")
    approval = page.locator("#approvals .approval")
    expect(approval).to_contain_text("calculator")
    expect(page.locator("#run-status")).to_have_text("waiting_approval")
    seen_before = [
        int(s)
        for s in page.locator("#timeline tr").evaluate_all("rows => rows.map(r => r.dataset.seq)")
    ]
    assert seen_before and seen_before[-1] > seen_before[0]

    resumed_from: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            resumed_from.append(r.headers.get("last-event-id"))
            if r.url.endswith(f"/v1/runs/{run_id}/events")
            else None
        ),
    )
    page.reload()
    expect(page.locator("#approvals .approval")).to_be_visible()
    assert resumed_from[:1] == [str(seen_before[-1])]
    page.wait_for_function("() => Number(document.getElementById('live-sse').textContent) >= 1")
    page.screenshot(path=str(console.shots / "run.png"), full_page=True)

    digest = approval.locator(".digest code").inner_text()
    pending = console.api.get("/v1/approvals").json()["data"]
    assert [a["args_digest"] for a in pending if a["run_id"] == run_id] == [digest]
    approval.locator("button.approve").click()
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#answer")).to_contain_text("42")
    expect(page.locator("#approvals .approval")).to_have_count(0)
    expect(page.locator("#timeline tr.ToolCallCompleted")).to_contain_text("42")
    expect(page.locator("#stream-state")).to_have_text("finished")

    shown = [
        int(s)
        for s in page.locator("#timeline tr").evaluate_all("rows => rows.map(r => r.dataset.seq)")
    ]
    assert shown == console.run_seqs(run_id)
    assert shown[: len(seen_before)] == seen_before
    assert console.api.get(f"/v1/runs/{run_id}").json()["status"] == "completed"
    page.close()


def test_cancel_button_cancels_a_waiting_run(console: Console) -> None:
    """Cancel on the run page ends a run that waits for approval, and the timeline shows it;
    a stream request that fails is retried."""
    run_id = console.wake("careful", '/tool calculator {"expr": "1+1"}')["run_id"]
    page = console.page()
    attempts: list[str] = []

    def drop_first(route: Route) -> None:
        attempts.append(route.request.url)
        if len(attempts) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(f"**/v1/runs/{run_id}/events", drop_first)
    console.login(page, f"#/run/{run_id}")
    expect(page.locator("#approvals .approval")).to_be_visible()
    assert len(attempts) == 2
    page.click("#cancel-run")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#timeline tr.RunCancelled")).to_have_count(1)
    assert console.api.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
    page.close()


def test_sessions_and_session_page_link_messages_to_runs(console: Console) -> None:
    """The sessions list filters by agent and key; a session shows its conversation as bubbles,
    each linked to the run that produced it."""
    woke = console.wake("careful", '/tool calculator {"expr": "2*21"}')
    _wait_pending(console, woke["run_id"])
    console.approve_pending(woke["run_id"])
    other = console.wake("helper", "hello there")
    _wait_finished(console, other["run_id"])
    _wait_finished(console, woke["run_id"])

    page = console.page()
    console.login(page)
    rows = page.locator("#sessions tbody tr")
    expect(rows.filter(has_text=woke["session_key"])).to_have_count(1)
    expect(rows.filter(has_text=other["session_key"])).to_have_count(1)
    page.select_option("#agent-filter", "helper")
    expect(rows.filter(has_text=woke["session_key"])).to_have_count(0)
    expect(rows.filter(has_text=other["session_key"])).to_have_count(1)
    page.select_option("#agent-filter", "")
    page.fill("#key-search", woke["session_key"][-6:])
    expect(rows).to_have_count(1)
    page.fill("#key-search", "")
    expect(page.locator("#live-actors")).not_to_have_text(NO_VALUE)
    page.screenshot(path=str(console.shots / "sessions.png"), full_page=True)

    rows.filter(has_text=woke["session_key"]).locator("a").first.click()
    bubbles = page.locator("#chat .bubble")
    expect(bubbles).to_have_count(4)
    expect(bubbles.nth(0)).to_have_class("bubble user")
    expect(bubbles.nth(2)).to_contain_text("42")
    expect(bubbles.nth(3)).to_contain_text("Tool calculator returned: 42")
    for i in range(4):
        expect(bubbles.nth(i).locator(".who a")).to_have_attribute(
            "href", f"#/run/{woke['run_id']}"
        )
    expect(page.locator("#live-actors")).not_to_have_text(NO_VALUE)
    page.screenshot(path=str(console.shots / "session.png"), full_page=True)
    bubbles.nth(3).locator(".who a").click()
    expect(page.locator("#run-status")).to_have_text("completed")
    page.close()


def test_a_waiting_run_is_labelled_and_linked(console: Console) -> None:
    """In the sessions list a run waiting for approval is labelled so; its session page links
    the run in progress (a link, not a printed array)."""
    woke = console.wake("careful", '/tool calculator {"expr": "3*3"}')
    _wait_pending(console, woke["run_id"])
    page = console.page()
    console.login(page)
    row = page.locator("#sessions tbody tr").filter(has_text=woke["session_key"])
    badge = row.locator("a.badge")
    expect(badge).to_have_text("waiting for approval")
    expect(badge).to_have_attribute("href", f"#/run/{woke['run_id']}")
    row.locator("a").first.click()
    current = page.locator("p.current")
    expect(current).to_have_text(f"A run is in progress: {woke['run_id']}")
    expect(current.locator("a")).to_have_attribute("href", f"#/run/{woke['run_id']}")
    page.close()
    assert console.api.post(f"/v1/runs/{woke['run_id']}/cancel").is_success


def test_audit_page_verifies_and_filters_activity(console: Console) -> None:
    """The audit page shows the head, verifies the chain with progress to a report, filters the
    activity view, and the live panel shows numbers from /metrics."""
    console.wake("helper", "one more")
    page = console.page()
    console.login(page, "#/audit")
    head = console.api.get("/v1/audit/head").json()
    shown_seq = int(page.locator("#head-seq").inner_text())
    assert shown_seq >= head["seq"]
    expect(page.locator("#anchor")).to_have_text("not anchored")
    page.click("#verify")
    expect(page.locator("#verify-report")).to_contain_text("chain intact")
    checked = int(page.locator("#verify-progress").get_attribute("value") or "0")
    assert checked >= shown_seq

    page.fill("#activity-filters input[name=type]", "RunStarted")
    page.click("#activity-filters button[type=submit]")
    activity = page.locator("#activity tr")
    expect(activity.first).to_contain_text("RunStarted")
    started = console.api.get("/v1/audit/events", params={"type": "RunStarted"}).json()["data"]
    expect(activity).to_have_count(len(started))
    expect(page.locator("#live-actors")).not_to_have_text(NO_VALUE)
    expect(page.locator("#live-appends")).not_to_have_text(NO_VALUE, timeout=WAIT_MS)
    page.screenshot(path=str(console.shots / "audit.png"), full_page=True)
    page.close()


def test_tools_page_lists_mcp_servers_and_providers_with_status(console: Console) -> None:
    """The tools page lists an MCP server with its status and tool count (and restarts it),
    and a registry provider with its key shown only as set."""
    server = Path(__file__).resolve().parent.parent / "fixtures" / "mcp_server.py"
    mcp = {"name": "t", "command": sys.executable, "args": [str(server), "stdio"]}
    created = console.api.post("/v1/mcp/servers", json=mcp)
    assert created.status_code == 201, created.text
    secret = "sk-console-" + secrets.token_hex(8)
    provider = {"id": "up", "base_url": "http://127.0.0.1:9/v1", "api_key": secret}
    assert console.api.post("/v1/providers", json=provider).status_code == 201
    page = console.page()
    console.login(page, "#/tools")
    row = page.locator("#mcp-servers tr[data-id=t]")
    expect(row).to_contain_text("connected")
    tools = len(console.api.get("/v1/mcp/servers/t").json()["tools"])
    expect(row.locator("td.num").first).to_have_text(str(tools))
    expect(page.locator("#providers tr[data-id=up]")).to_contain_text("set")
    expect(page.locator("#providers tr[data-id=up]")).to_contain_text("ready")
    expect(page.locator("#builtin-tools tr[data-name=clock]")).to_contain_text("on")
    row.locator("button.restart").click()
    expect(row.locator("td.num").nth(1)).to_have_text("1", timeout=30_000)
    expect(row).to_contain_text("connected")
    assert secret not in page.content()
    page.screenshot(path=str(console.shots / "tools.png"), full_page=True)
    page.close()
    assert console.api.delete("/v1/mcp/servers/t").status_code == 200


def test_console_files_are_public_and_confined(console: Console) -> None:
    """/ui and its files answer without a key, with a same-origin CSP; nothing else is served."""
    for path in ("/ui", "/ui/", "/ui/app.js", "/ui/app.css"):
        response = httpx.get(console.server.url + path, timeout=10)
        assert response.status_code == 200, path
        assert "default-src 'self'" in response.headers["content-security-policy"]
    for path in ("/ui/missing.js", "/ui/..%2Fpyproject.toml", "/ui/../_console.py"):
        assert httpx.get(console.server.url + path, timeout=10).status_code == 404, path


def _wait_pending(console: Console, run_id: str) -> None:
    with console.api.stream("GET", f"/v1/runs/{run_id}/events") as response:
        for line in response.iter_lines():
            if line == "event: ApprovalRequested":
                return
    raise AssertionError(json.dumps(console.api.get(f"/v1/runs/{run_id}").json()))


def _wait_finished(console: Console, run_id: str) -> None:
    console.run_seqs(run_id)  # the stream closes after the run's last event


def test_loops_page_shows_next_fire_and_history_and_toggles_and_runs(console: Console) -> None:
    """The loops page lists a loop with its next fire; Run now adds a fire whose run completes
    and shows in the loop's history; Turn off clears the next fire, in the page and the API."""
    body = {"id": "morning", "agent": "helper", "message": "hi", "trigger": {"every": 86400}}
    created = console.api.post("/v1/loops", json=body)
    assert created.status_code == 201, created.text
    next_fire = created.json()["next_fire_at"]
    page = console.page()
    console.login(page, "#/loops")
    row = page.locator("#loops tr[data-loop=morning]")
    expect(row.locator(".next-fire")).to_contain_text(
        datetime.fromtimestamp(next_fire, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    )
    row.locator("button.run-loop").click()
    # The list shows the fire's run once the server took it (the page the link opens then has it).
    expect(row.locator("td:nth-child(6) .badge")).to_have_count(1)
    row.locator("a").click()
    expect(page.locator("#fires tr")).to_have_count(1)
    expect(page.locator("#fires tr .badge")).to_have_text("completed")
    page.screenshot(path=str(console.shots / "loop.png"), full_page=True)
    page.locator("button.toggle-loop").click()
    expect(page.locator("#next-fire")).to_have_text("\N{EN DASH}")
    assert console.api.get("/v1/loops/morning").json()["enabled"] is False
    page.close()


def _bar_values(page: Page, chart: str) -> list[float]:
    values: list[str] = page.locator(f"#{chart} rect.bar").evaluate_all(
        "bars => bars.map((bar) => bar.getAttribute('data-value'))"
    )
    return [float(value) for value in values]


def test_usage_page_charts_tokens_and_cost_and_lists_top_agents(console: Console) -> None:
    """After runs on an agent, the usage page's totals are the API's; the token chart has a bar
    per hour of the last 24 whose values add up to the tokens, the cost chart's to the cost; the
    top agents link to the runs list filtered by agent; 7d shows a bar per day."""
    for i in range(2):
        woke = console.api.post("/v1/agents/helper/wake", json={"message": f"usage {i}"})
        assert woke.status_code == 200, woke.text
    page = console.page()
    console.login(page, "#/usage")
    expect(page.locator("#chart-tokens rect.bar")).to_have_count(24)
    summary = console.api.get("/v1/usage/summary", params={"period": "24h"}).json()
    costs = console.api.get("/v1/costs/summary", params={"period": "24h"}).json()
    expect(page.locator("#usage-runs")).to_have_text(str(summary["runs"]))
    expect(page.locator("#usage-tokens")).to_contain_text(str(summary["total_tokens"]))
    tokens = _bar_values(page, "chart-tokens")
    assert sum(tokens) == summary["total_tokens"] > 0
    assert tokens[-1] > 0  # this hour's bar is the last
    cost = _bar_values(page, "chart-cost")
    assert abs(sum(cost) - costs["total_cost"]) < 1e-9 and costs["total_cost"] > 0
    by_agent = console.api.get(
        "/v1/usage/breakdown", params={"period": "24h", "group_by": "agent"}
    ).json()["data"]
    [helper] = [group for group in by_agent if group["value"] == "helper"]
    row = page.locator("#top-agents tr[data-agent=helper]")
    expect(row.locator(".tokens")).to_have_text(str(helper["total_tokens"]))
    page.screenshot(path=str(console.shots / "usage.png"), full_page=True)
    page.select_option("#usage-period", "7d")
    expect(page.locator("#chart-tokens rect.bar")).to_have_count(7)
    assert sum(_bar_values(page, "chart-tokens")) >= summary["total_tokens"]
    row = page.locator("#top-agents tr[data-agent=helper]")
    row.locator("a").click()
    expect(page.locator("#runs-agent")).to_have_value("helper")
    expect(page.locator("#runs tr").first).to_be_visible()
    agents = page.locator("#runs tr td:nth-child(2)").all_inner_texts()
    assert agents and set(agents) == {"helper"}
    page.close()


def test_runs_list_filters_by_agent_status_and_time_and_keeps_them_in_the_address(
    console: Console,
) -> None:
    """Filtering the runs list by agent and status shows only those runs (as the API lists
    them); the filters stay in the address across a reload; a `from` in the future empties it."""
    woke = console.api.post("/v1/agents/helper/wake", json={"message": "listed"})
    assert woke.status_code == 200, woke.text
    page = console.page()
    console.login(page, "#/runs")
    expect(page.locator("#runs tr").first).to_be_visible()
    page.select_option("#runs-agent", "helper")
    page.select_option("#runs-status", "completed")
    want = console.api.get(
        "/v1/runs", params={"agent": "helper", "status": "completed", "limit": 50}
    ).json()["data"]
    expect(page.locator("#runs tr")).to_have_count(len(want))
    shown = page.locator("#runs tr").evaluate_all("rows => rows.map((r) => r.dataset.run)")
    assert shown == [run["id"] for run in want]
    assert woke.json()["run_id"] in shown
    page.reload()
    expect(page.locator("#runs-agent")).to_have_value("helper")
    expect(page.locator("#runs-status")).to_have_value("completed")
    expect(page.locator("#runs tr")).to_have_count(len(want))
    page.screenshot(path=str(console.shots / "runs.png"), full_page=True)
    page.fill("#runs-from", "2999-01-01T00:00")
    page.dispatch_event("#runs-from", "change")
    expect(page.locator("#runs tr")).to_have_count(0)
    page.close()
