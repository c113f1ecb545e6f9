"""Errors raised by the actors layer.

CuelogError (cuelog.runtime)
├── ModelError      a model provider could not produce a reply (upstream status, network, config)
└── ToolError       a tool refused its arguments, failed or timed out; becomes a tool message
"""

from __future__ import annotations

from cuelog.runtime import CuelogError


class ModelError(CuelogError):
    """The model provider failed; `status` is the upstream HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ToolError(CuelogError):
    """A tool call failed; the message is written for the model to read."""
