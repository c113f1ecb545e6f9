"""cuelog.http's public surface: the app, the server and its settings, for the command line.

The folder has no `__init__.py` (so the standard library's `http` is never shadowed from the
repository root); this module is what the layers above import.
"""

from cuelog.http._app import create_app as create_app
from cuelog.http._config import ConfigError as ConfigError
from cuelog.http._config import Settings as Settings
from cuelog.http._config import load_settings as load_settings
from cuelog.http._openai import chat_completion as chat_completion
from cuelog.http._schemas import Anchored as Anchored
from cuelog.http._server import hypercorn_config as hypercorn_config
from cuelog.http._server import serve as serve
from cuelog.http._services import Services as Services

__all__ = [
    "Anchored",
    "ConfigError",
    "Services",
    "Settings",
    "chat_completion",
    "create_app",
    "hypercorn_config",
    "load_settings",
    "serve",
]
