"""`cuelog keys create|list|revoke`: manage API keys in a data dir while no server holds it."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import msgspec
import trio

from cuelog.actors import SCOPES, Invalid, KeyInfo, KeyStore
from cuelog.runtime import LogError, LogLocked, open_event_log

T = TypeVar("T")
EXIT_USAGE = 2
CLI_ACTOR = "cli"

_data_dir = click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data dir (log.data_dir).",
)
_as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _run(data_dir: Path, work: Callable[[KeyStore], Awaitable[T]], *, readonly: bool) -> T:
    async def main() -> T:
        async with open_event_log(data_dir, readonly=readonly) as log:
            return await work(KeyStore(log))

    try:
        return trio.run(main)
    except LogLocked as exc:
        who = f" (pid {exc.pid})" if exc.pid else ""
        click.echo(
            f"cuelog keys: {data_dir} is held by a running server{who}; "
            "manage keys through it with POST /v1/keys and DELETE /v1/keys/{id} instead",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    except (LogError, Invalid) as exc:
        click.echo(f"cuelog keys: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _line(info: KeyInfo) -> str:
    expires = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.expires_at))
        if info.expires_at is not None
        else "never"
    )
    state = "revoked" if info.revoked else "active"
    return f"{info.id}  {state:<7}  {','.join(info.scopes):<24}  expires {expires}  {info.name}"


@click.group("keys")
def keys() -> None:
    """Create, list and revoke API keys offline (a running server uses /v1/keys instead)."""


@keys.command("create")
@_data_dir
@click.option("--name", required=True, help="What the key is for (shown in lists).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="A scope to grant; repeat for more (admin implies all).",
)
@click.option(
    "--expires-in", type=click.IntRange(min=1), default=None, help="Seconds until it expires."
)
@_as_json
def create_command(
    data_dir: Path, name: str, scopes: tuple[str, ...], expires_in: int | None, as_json: bool
) -> None:
    """Issue a key and print its secret, which is shown this once and never stored."""
    if not name.strip() or len(name) > 200:
        raise click.BadParameter("must be 1-200 characters", param_hint="--name")
    expires_at = int(time.time()) + expires_in if expires_in is not None else None

    async def work(store: KeyStore) -> tuple[KeyInfo, str]:
        return await store.create(name, list(scopes), expires_at=expires_at, actor=CLI_ACTOR)

    info, secret = _run(data_dir, work, readonly=False)
    if as_json:
        payload = {**msgspec.structs.asdict(info), "key": secret}
        click.echo(msgspec.json.encode(payload).decode())
        return
    click.echo(f"id:      {info.id}")
    click.echo(f"name:    {info.name}")
    click.echo(f"scopes:  {', '.join(info.scopes)}")
    click.echo(f"secret:  {secret}")
    click.echo("The secret is shown only now; store it safely.", err=True)


@keys.command("list")
@_data_dir
@_as_json
def list_command(data_dir: Path, as_json: bool) -> None:
    """Every key issued, revoked ones too (never a secret); works beside a running server."""
    if not (data_dir / "data.mdb").exists():
        raise click.BadParameter(f"{data_dir} holds no log", param_hint="--data-dir")

    async def work(store: KeyStore) -> list[KeyInfo]:
        return store.all()

    found = _run(data_dir, work, readonly=True)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    for info in found:
        click.echo(_line(info))
    if not found:
        click.echo("no keys", err=True)


@keys.command("revoke")
@_data_dir
@click.argument("key_id")
def revoke_command(data_dir: Path, key_id: str) -> None:
    """Revoke a key by id; the server refuses it from its next start."""
    if not (data_dir / "data.mdb").exists():
        raise click.BadParameter(f"{data_dir} holds no log", param_hint="--data-dir")

    async def work(store: KeyStore) -> KeyInfo | None:
        return await store.revoke(key_id, actor=CLI_ACTOR)

    info = _run(data_dir, work, readonly=False)
    if info is None:
        click.echo(f"cuelog keys: no key {key_id!r} in {data_dir}", err=True)
        sys.exit(1)
    click.echo(f"revoked: {_line(info)}")
