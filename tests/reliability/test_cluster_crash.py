"""Three real `cuelog serve` nodes on one PostgreSQL log while one of them is SIGKILLed again and
again: clients spread idempotent wakes and chat completions (answered whole or streamed) over all
three and send what was not acknowledged again on another node. Every acknowledged request is in
the log exactly once, no run starts twice, every run settles, every chat answered got its own
answer, the chain verifies, and the time until a dead node's actors are owned elsewhere is
printed.

CUELOG_CLUSTER_KILLS sets the number of kills (10 by default; `make soak` runs 200).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from cuelog.actors import DOMAIN_CODEC
from cuelog.runtime import decode_record
from tests.postgres import fresh_database, run_sql
from tests.support import CUELOG, ServerProcess, start_server

KEY = "cluster-crash-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
KILLS = int(os.environ.get("CUELOG_CLUSTER_KILLS", "10"))
TTL = 2.0
NODES = ("a", "b", "c")
TERMINAL = {"RunCompleted", "RunFailed", "RunCancelled"}


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


class Accepted(msgspec.Struct):
    """The fields of a `MessageAccepted` payload these tests read."""

    run_id: str
    messages: list[dict[str, Any]]


def accepted_event(data: bytes) -> Accepted:
    return msgspec.msgpack.decode(data, type=Accepted)


class Cluster:
    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.servers: dict[str, ServerProcess] = {}
        self.lock = threading.Lock()

    def start(self, name: str) -> None:
        env = {"CUELOG_CLUSTER_LEASE_TTL": str(TTL), "CUELOG_CLUSTER_RENEW_INTERVAL": "0.3"}
        os.environ.update(env)
        try:
            server = start_server(
                self.tmp_path / name, "--log", self.url, "--node", name, "--api-key", KEY
            )
        finally:
            for key in env:
                del os.environ[key]
        with self.lock:
            self.servers[name] = server

    def urls(self) -> list[str]:
        with self.lock:
            return [s.url for s in self.servers.values() if s.proc.poll() is None]


# What each client thread sends: async wakes, chat completions (the answer waits for the run),
# streamed chat completions.
KINDS = ("wake", "wake", "chat", "chat", "stream")


class Request(msgspec.Struct, frozen=True):
    """One client request: where it goes, what it says, and the session it continues."""

    kind: str
    path: str
    body: dict[str, Any]
    text: str
    session: str | None = None  # a chat's session (a wake names its own in the body)

    def headers(self, key: str) -> dict[str, str]:
        headers = {"Idempotency-Key": key}
        if self.session is not None:
            headers["X-Session-Key"] = self.session
        return headers


def request_for(kind: str, client: int, number: int) -> tuple[str, Request]:
    key = f"{kind[0]}{client}-{number}"
    text = f"hello {key}"
    if kind == "wake":
        body: dict[str, Any] = {"message": text, "session_key": f"s{client}", "mode": "async"}
        return key, Request(kind, "/v1/agents/default/wake", body, text)
    body = {"model": "default", "messages": [{"role": "user", "content": text}]}
    if kind == "stream":
        body["stream"] = True
    return key, Request(kind, "/v1/chat/completions", body, text, f"chat{client}")


class Unacknowledged(Exception):
    """The request's answer never came whole (its node died, say): send it again elsewhere.
    `run_id` is the run a stream had named before it broke off."""

    def __init__(self, run_id: str | None = None) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def post(http: httpx.Client, base: str, key: str, request: Request) -> tuple[str, str | None]:
    """Send `request` to the node at `base`; the run it made and, for a chat that finished, the
    answer's text. Raises `Unacknowledged` when it has to be sent again."""
    url = base + request.path
    if request.kind != "stream":
        response = http.post(url, json=request.body, headers=request.headers(key))
        if response.status_code == 503:
            raise Unacknowledged
        if request.kind == "wake":
            assert response.status_code == 202, response.text
            return str(response.json()["run_id"]), None
        # A chat whose run ended without an answer (its node died mid-run: `interrupted`)
        # still made its run, and the error names it.
        if response.status_code == 502 and response.json()["error"]["code"] == "run_failed":
            return response.headers["X-Run-Id"], None
        assert response.status_code == 200, response.text
        run_id = response.headers["X-Run-Id"]
        assert response.json()["id"] == f"chatcmpl-{run_id}"
        return run_id, response.json()["choices"][0]["message"]["content"]
    with http.stream("POST", url, json=request.body, headers=request.headers(key)) as response:
        if response.status_code == 503:
            raise Unacknowledged
        assert response.status_code == 200, response.read()
        run_id = response.headers["X-Run-Id"]  # the run is in the log: acknowledged
        try:
            return read_stream(response, run_id)
        except httpx.HTTPError as exc:  # its node died mid-stream
            raise Unacknowledged(run_id) from exc


def read_stream(response: httpx.Response, run_id: str) -> tuple[str, str | None]:
    """A streamed chat's run and text (None if the run failed), once its `[DONE]` came."""
    text: list[str] = []
    failed = False
    for line in response.iter_lines():
        if line.startswith("event: error"):
            raise Unacknowledged(run_id)  # the stream broke off (not the run): send again
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            return run_id, None if failed else "".join(text)
        chunk = json.loads(data)
        if "error" in chunk:
            assert chunk["error"]["code"] == "run_failed", chunk
            failed = True
            continue
        assert chunk["id"] == f"chatcmpl-{run_id}", chunk
        text.extend(c["delta"].get("content") or "" for c in chunk["choices"])
    raise Unacknowledged(run_id)  # cut before [DONE]


class Clients:
    """Threads sending wakes and chats to random nodes with unique Idempotency-Keys, each on a
    session of its own (so sessions are owned by some node and requests for them are forwarded),
    sending a request again on another node until its answer came whole.

    A request is acknowledged once a node answered with its run; a streamed chat's answer is
    whole once its stream reached `[DONE]` (a stream cut by a kill is sent again with the same
    key, and replays the same run)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}
        self.requests: dict[str, Request] = {}
        self.answers: dict[str, str | None] = {}  # chats: the answer's text, None if it failed
        self.stop = threading.Event()
        self.retries = 0
        self.cut = 0  # streams cut after naming their run, then sent again

    def run(self, client: int) -> None:
        rng = random.Random(client)
        kind = KINDS[client]
        number = 0
        with httpx.Client(timeout=10, headers=HEADERS) as http:
            while not self.stop.is_set():
                key, request = request_for(kind, client, number)
                with self.lock:
                    self.requests[key] = request
                while not self.stop.is_set():
                    urls = self.cluster.urls()
                    if not urls:
                        time.sleep(0.02)
                        continue
                    try:
                        run_id, answer = post(http, rng.choice(urls), key, request)
                    except (httpx.HTTPError, Unacknowledged) as exc:
                        with self.lock:
                            self.retries += 1
                            if isinstance(exc, Unacknowledged) and exc.run_id is not None:
                                self.ack(key, exc.run_id)
                                self.cut += 1
                        time.sleep(0.02)
                        continue
                    with self.lock:
                        self.ack(key, run_id)
                        if kind != "wake":
                            self.answers[key] = answer
                    break
                number += 1

    def ack(self, key: str, run_id: str) -> None:
        """Record `key`'s run (under the lock); every answer for one key names the same run."""
        first = self.acked.setdefault(key, run_id)
        assert first == run_id, f"{key} made runs {first} and {run_id}"


def stream_events(url: str, prefix: str) -> list[tuple[str, str, bytes]]:
    """(stream, type, data) of every event in streams starting with `prefix`, in seq order."""
    rows = run_sql(
        url,
        "SELECT record FROM cuelog_events WHERE stream LIKE %s ORDER BY seq",
        [prefix + "%"],
    )
    out = []
    for (record,) in rows:
        assert isinstance(record, bytes)
        event = decode_record(record)
        out.append((event.stream, event.type, bytes(event.data)))
    return out


def accepted_runs(url: str) -> Counter[str]:
    """How many times each run's message was accepted into a session."""
    accepted: Counter[str] = Counter()
    for _, type_, data in stream_events(url, "session:"):
        if type_ == "MessageAccepted":
            accepted[accepted_event(data).run_id] += 1
    return accepted


def diagnose(url: str, open_runs: list[str]) -> str:
    """Where the first unsettled runs stand: their events, their session's, their leases."""
    lines = []
    where: dict[str, str] = {}
    for stream, type_, data in stream_events(url, "session:"):
        if type_ == "MessageAccepted":
            where[accepted_event(data).run_id] = stream
    for run_id in open_runs[:3]:
        session = where.get(run_id, "?")
        run_types = [t for _, t, _ in stream_events(url, f"run:{run_id}")]
        session_types = [t for st, t, _ in stream_events(url, session) if st == session]
        leases = run_sql(
            url,
            "SELECT key, node, epoch, expiry > clock_timestamp(), expiry = '-infinity' "
            "FROM cuelog_leases WHERE key = ANY(%s)",
            [[f"run:{run_id}", session]],
        )
        lines.append(f"\n{run_id}: {run_types}; {session}: ...{session_types[-8:]}; {leases}")
        assigned = [
            DOMAIN_CODEC.decode(t, d)
            for st, t, d in stream_events(url, session)
            if st == session and t == "RunAssigned"
        ]
        if assigned:
            current = getattr(assigned[-1], "run_id", "?")
            current_types = [t for _, t, _ in stream_events(url, f"run:{current}")]
            current_lease = run_sql(
                url,
                "SELECT node, epoch, expiry > clock_timestamp(), expiry = '-infinity' "
                "FROM cuelog_leases WHERE key = %s",
                [f"run:{current}"],
            )
            lines.append(f"\n  current {current}: {current_types}; {current_lease}")
    return "".join(lines)


def owned_by(url: str, node: str) -> int:
    """Leases `node` holds that were not released (what a dead node leaves to others)."""
    rows = run_sql(
        url,
        "SELECT count(*) FROM cuelog_leases WHERE node = %s AND expiry > '-infinity'",
        [node],
    )
    return int(str(rows[0][0]))


def test_a_cluster_loses_nothing_acknowledged_and_runs_nothing_twice_under_sigkill(
    tmp_path: Path, url: str
) -> None:
    """After repeated SIGKILLs of one of three nodes under load: each acknowledged wake and chat
    has exactly one MessageAccepted and its run one RunStarted and one end; each chat answered
    answers its own message; repeats of acknowledged keys on any node return the same run; the
    dead node's work moves within the lease TTL plus a little; `cuelog verify` passes."""
    cluster = Cluster(tmp_path, url)
    for name in NODES:
        cluster.start(name)
    clients = Clients(cluster)
    threads = [
        threading.Thread(target=clients.run, args=(i,), daemon=True) for i in range(len(KINDS))
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(4321)
    moved_after: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.0))
            victim = rng.choice(NODES)
            cluster.servers[victim].kill()
            killed_at = time.monotonic()
            held = owned_by(url, victim)
            # The others take over what it held; then it comes back under its name.
            while owned_by(url, victim) and time.monotonic() < killed_at + TTL + 10:
                time.sleep(0.05)
            if held:
                moved_after.append(time.monotonic() - killed_at)
            assert owned_by(url, victim) == 0, "the dead node's leases were never taken over"
            cluster.start(victim)
        time.sleep(0.5)
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    try:
        acked = dict(clients.acked)
        assert len(acked) >= KILLS, "the clients made too little progress to prove anything"
        assert moved_after, "no kill ever hit a node that owned something"
        deadline = time.monotonic() + 60
        while True:
            runs: dict[str, list[str]] = {}
            for stream, type_, _ in stream_events(url, "run:"):
                runs.setdefault(stream.removeprefix("run:"), []).append(type_)
            open_runs = [r for r in acked.values() if not TERMINAL & set(runs.get(r, []))]
            if not open_runs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not open_runs, f"runs never settled: {open_runs[:5]}" + diagnose(url, open_runs)
        for run_id in acked.values():
            types = runs[run_id]
            assert types.count("RunStarted") == 1, (run_id, types)
            assert sum(t in TERMINAL for t in types) == 1, (run_id, types)
        accepted = accepted_runs(url)
        assert not [r for r, n in accepted.items() if n > 1], "a message was accepted twice"
        assert set(acked.values()) <= set(accepted), "an acknowledged request is missing"
        chats = {k: v for k, v in clients.answers.items() if v is not None}
        for key, answer in chats.items():
            assert answer == f"Echo: {clients.requests[key].text}", (key, answer)
        assert chats, "no chat was answered"
        assert any(r.kind == "stream" for k, r in clients.requests.items() if k in chats)
        # Repeats of acknowledged keys, on any node, attach to the same run and add nothing
        # (a session remembers its last 50 runs: each client's latest keys are sent again).
        latest: dict[str, list[str]] = {}
        for key in acked:
            latest.setdefault(key.split("-")[0], []).append(key)
        with httpx.Client(headers=HEADERS, timeout=10) as http:
            for keys in latest.values():
                for key in sorted(keys, key=lambda k: int(k.split("-")[1]))[-5:]:
                    again, replayed = post(
                        http, rng.choice(cluster.urls()), key, clients.requests[key]
                    )
                    assert again == acked[key], key
                    if key in chats:
                        assert replayed == chats[key], key
        assert accepted_runs(url) == accepted
        counts = Counter(clients.requests[key].kind for key in acked)
        print(
            f"\ncluster: {counts['wake']} wakes, {counts['chat']} chats, {counts['stream']} "
            f"streamed chats acknowledged ({len(acked) - len(chats) - counts['wake']} chats "
            f"ended without an answer), {clients.retries} retries ({clients.cut} of streams "
            f"cut after naming their run), {KILLS} kills; dead node's "
            f"leases moved after max {max(moved_after):.2f} s, "
            f"median {statistics.median(moved_after):.2f} s (lease TTL {TTL} s)"
        )
        # The dead node's work moves within the lease TTL plus a second, as a rule; every kill's
        # did (see the loop above). A rare takeover in a loaded full run has taken up to 10 s.
        assert statistics.median(moved_after) < TTL + 1
    finally:
        for server in cluster.servers.values():
            if server.proc.poll() is None:
                assert server.terminate() == 0
    verify = subprocess.run(
        [CUELOG, "verify", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
