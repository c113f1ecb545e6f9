"""cuelog.actors: agents, sessions, runs, tools, model providers and approvals as actors."""

__all__: list[str] = []
