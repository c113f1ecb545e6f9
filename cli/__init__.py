"""cuelog.cli: the `cuelog` command line: serve, verify, timeline, rerun, keys, backup, bench…"""

from cuelog.cli._main import main as main

__all__ = ["main"]
