"""cuelog.actors: agents, sessions, runs, tools, model providers and approvals as actors."""

from cuelog.actors._errors import ModelError as ModelError
from cuelog.actors._errors import ToolError as ToolError
from cuelog.actors._events import DOMAIN_CODEC as DOMAIN_CODEC
from cuelog.actors._events import AgentSpec as AgentSpec
from cuelog.actors._messages import ChatMessage as ChatMessage
from cuelog.actors._messages import Role as Role
from cuelog.actors._messages import ToolCall as ToolCall
from cuelog.actors._messages import ToolSpec as ToolSpec
from cuelog.actors._messages import Usage as Usage
from cuelog.actors._models import Finished as Finished
from cuelog.actors._models import FinishReason as FinishReason
from cuelog.actors._models import ModelChunk as ModelChunk
from cuelog.actors._models import ModelProvider as ModelProvider
from cuelog.actors._models import ModelRequest as ModelRequest
from cuelog.actors._models import TextDelta as TextDelta
from cuelog.actors._models import ToolCallChunk as ToolCallChunk
from cuelog.actors._models_echo import EchoModel as EchoModel
from cuelog.actors._models_openai import OpenAIConfig as OpenAIConfig
from cuelog.actors._models_openai import OpenAIModel as OpenAIModel
from cuelog.actors._tools import Tool as Tool
from cuelog.actors._tools import invoke_tool as invoke_tool
from cuelog.actors._tools import parse_tool_arguments as parse_tool_arguments
from cuelog.actors._tools import tool_spec as tool_spec
from cuelog.actors._tools_registry import ToolRegistry as ToolRegistry
from cuelog.actors._tools_registry import ToolsConfig as ToolsConfig

__all__ = [
    "DOMAIN_CODEC",
    "AgentSpec",
    "ChatMessage",
    "EchoModel",
    "FinishReason",
    "Finished",
    "ModelChunk",
    "ModelError",
    "ModelProvider",
    "ModelRequest",
    "OpenAIConfig",
    "OpenAIModel",
    "Role",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallChunk",
    "ToolError",
    "ToolRegistry",
    "ToolSpec",
    "ToolsConfig",
    "Usage",
    "invoke_tool",
    "parse_tool_arguments",
    "tool_spec",
]
